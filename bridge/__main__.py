"""``python -m bridge`` is ``fleet-bridge``."""

import sys

from bridge.commands.cli import main

sys.exit(main())
