"""``python -m edgeseg_runtime``: the device-side command line."""

import sys

from .cli import main

sys.exit(main())
