"""`python -m systemtest`: see systemtest.cli."""

import sys

from systemtest.cli import main

sys.exit(main())
