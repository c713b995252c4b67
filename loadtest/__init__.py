"""echod-bench: a multiprocess load generator for TCP echo servers (RFC 862).

It drives the wire only and never imports the server it measures, so its figures
mean the same against echod, another echo server or a load balancer.
"""

__version__ = "0.1.0"


def run() -> int:
    """The console entry point: one clear line, not a traceback, without the extra."""
    import sys

    try:
        import hdrh  # noqa: F401
        import psutil  # noqa: F401
    except ModuleNotFoundError as exc:
        print(
            f"echod-bench: error: {exc.name} is not installed: pip install 'echod[loadtest]'",
            file=sys.stderr,
        )
        return 2
    from loadtest.cli import main

    return main()
