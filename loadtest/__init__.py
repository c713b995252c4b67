"""echod-bench: a multiprocess load generator for TCP echo servers (RFC 862).

It drives the wire only and never imports the server it measures, so its figures
mean the same against echod, another echo server or a load balancer.
"""

__version__ = "0.1.0"
