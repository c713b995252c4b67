"""``python -m loadtest`` runs the same command as ``echod-bench``."""

import sys

from loadtest import run

sys.exit(run())
