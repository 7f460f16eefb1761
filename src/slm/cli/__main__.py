"""`python -m slm.cli ...` (and `torchrun ... -m slm.cli ...`): the same entry point as the `slm` console script."""

import sys

from .app import main

sys.exit(main())
