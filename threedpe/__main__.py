"""``python -m threedpe``: see :mod:`threedpe.cli`."""
import sys

from threedpe.cli import main

sys.exit(main())
