"""``python -m echod``: the same as the ``echod`` command."""

import sys

from echod.cli import main

sys.exit(main())
