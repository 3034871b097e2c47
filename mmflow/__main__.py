"""`python -m mmflow` / `accelerate launch -m mmflow ...`."""

import sys

from mmflow.cli import main

sys.exit(main())
