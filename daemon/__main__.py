"""`python -m daemon` runs the callbackd command line."""

import sys

from daemon.cli import main

sys.exit(main())
