"""Entry point of ``python -m spinal``."""

import sys

from spinal.cli import main

sys.exit(main())
