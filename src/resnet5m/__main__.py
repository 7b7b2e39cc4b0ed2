"""``python -m resnet5m ...`` (what ``torchrun -m resnet5m train ...`` runs)."""

import sys

from resnet5m.cli.main import main

sys.exit(main())
