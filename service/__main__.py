"""``python -m service [serve] [--host H] [--port P]``: the same as ``roiconv serve``."""

import sys

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
