"""`python -m workers.cli ...` is `dmd ...`."""

import sys

from . import main

sys.exit(main())
