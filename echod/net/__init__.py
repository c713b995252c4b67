"""Listening sockets: parsing addresses, binding, describing."""
