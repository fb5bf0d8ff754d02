"""``python -m cnncodes`` (also what ``torchrun -m cnncodes`` runs)."""

import sys

from .cli.main import main

sys.exit(main())
