"""`python -m polycom` (also `torchrun -m polycom train ...`)."""

import sys

from polycom.cli import main

sys.exit(main())
