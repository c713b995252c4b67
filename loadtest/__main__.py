"""``python -m loadtest`` runs the same command as ``echod-bench``."""

import sys

from loadtest.cli import main

sys.exit(main())
