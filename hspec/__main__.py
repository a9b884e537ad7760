"""``python -m hspec`` (and ``torchrun -m hspec``): the command line."""

import sys

from hspec.pipeline.cli import main

sys.exit(main())
