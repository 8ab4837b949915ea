"""``python -m loadgen`` is ``fleet-loadgen``."""

import sys

from loadgen.cli import main

sys.exit(main())
