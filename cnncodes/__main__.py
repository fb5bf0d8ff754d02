"""``python -m cnncodes`` (also what ``torchrun -m cnncodes`` runs)."""

import sys

from .cli import main

sys.exit(main())
