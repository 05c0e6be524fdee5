"""``python -m edgeseg``: the host command line."""

import sys

from .cli import main

sys.exit(main())
