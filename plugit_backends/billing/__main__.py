"""``python -m plugit_backends.billing --config FILE ACTION ...``, as ``plugit billing``."""

import sys

from .cli import main

sys.exit(main())
