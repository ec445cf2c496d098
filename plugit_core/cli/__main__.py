"""``python -m plugit_core.cli``: the ``plugit`` command."""

import sys

from .main import main

sys.exit(main())
