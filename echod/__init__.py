"""echod: a TCP echo server (RFC 862) over every Python IO model."""

__version__ = "0.1.0"
