"""`python -m refsource` — see refsource/cli.py."""

import sys

from refsource.cli import main

if __name__ == "__main__":
    sys.exit(main())
