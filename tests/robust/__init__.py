"""The robustness suite (issue 5): every backend against hostile and unlucky clients.

``make robust`` (``python -m tests.robust``) runs every case at full scale on every
backend and on the naive server, and writes ``docs/robustness.md``; ``test_robust.py``
runs the same cases at a short scale under pytest (marker ``robust``).
"""
