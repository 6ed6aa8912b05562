"""``python -m optimizer.service --config service.yaml``"""

import sys

from . import main

sys.exit(main())
