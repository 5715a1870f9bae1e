"""``python -m etcdvisor``: the ``supervisor`` command."""

import sys

from .cli import main

sys.exit(main())
