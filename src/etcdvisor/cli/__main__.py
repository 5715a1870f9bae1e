"""``python -m etcdvisor.cli``: the ``supervisor`` command."""

import sys

from . import main

sys.exit(main())
