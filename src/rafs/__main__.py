"""`python -m rafs` runs the command-line interface."""

import sys

from rafs.cli import main

sys.exit(main())
