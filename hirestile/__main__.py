"""``python -m hirestile`` runs the command line (same as the ``hirestile`` script)."""
import sys

from hirestile.cli import main

sys.exit(main())
