"""Imported (for its effect) by a process that forks detecting workers, before it forks them: torch set to one
thread and the fast network built once, so that every worker starts with both (copy-on-write pages) instead of
importing torch and building the network itself (about 1.5 s of CPU each, measured on the 2-core dev machine).

One thread before anything runs: no OpenMP thread team exists to be lost across the fork. A failure to build is left
to the workers, which meet it again and report it per file.
"""

from __future__ import annotations

import logging

import torch

from .model import fast_centerface

torch.set_num_threads(1)
try:
    fast_centerface()
except Exception as exc:  # ImportError (the extra missing), a bad model file: each worker reports it
    logging.getLogger("roiconv.faces").debug("the network was not built before forking: %s", exc)
