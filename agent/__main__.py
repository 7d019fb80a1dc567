"""`python -m agent` is the same as the `bangtin-agent` console script."""

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
