"""`python -m leap_core.cli ...`: the same as `leap ...`."""

import sys

from leap_core.cli import main

sys.exit(main())
