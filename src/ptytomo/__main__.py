"""``python -m ptytomo`` (also what ``torchrun -m ptytomo`` runs)."""

import sys

from .cli import main

sys.exit(main())
