"""``python -m service.bench``: the floor comparison (:mod:`service.bench.floor`)."""

from .floor import main

if __name__ == "__main__":
    raise SystemExit(main())
