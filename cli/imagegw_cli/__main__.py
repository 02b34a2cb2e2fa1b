"""`python -m imagegw_cli`, the same as the `imagegw` command."""

import sys

from .main import main

sys.exit(main())
