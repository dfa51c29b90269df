"""``python3 -m agents`` and the zipapp entry point."""

import sys

from agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
