"""``python -m optimizer`` is the ``optimize`` command."""

import sys

from .cli import main

sys.exit(main())
