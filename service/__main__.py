"""``python -m service [serve] --host H --port P``: the same as ``roiconv serve`` (``serve`` may be left out when
options follow); ``python -m service apply ...`` is ``roiconv apply``; alone it prints the help and exits with 2."""

import sys

from .cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "serve")
    raise SystemExit(main(argv))
