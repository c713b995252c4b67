"""The echod benchmark: every backend and a C reference through one fixed matrix.

Run ``python -m bench`` (``make bench``) or ``python -m bench --quick``.  Load comes
from ``echod-bench`` (the ``loadtest`` package) run as a subprocess, exactly as a
user would run it, so the bench measures nothing the generator does not report.
"""
