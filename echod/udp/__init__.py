"""UDP echo (RFC 862's datagram half), guarded so that it is safe to expose.

``guard`` decides, without IO, whether a datagram may be answered; ``serving`` reads
and answers datagrams for any loop that can watch a descriptor for reading.
"""
