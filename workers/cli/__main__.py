"""`python -m workers.cli ...` is `dmd ...`."""

import sys

from . import run

sys.exit(run())
