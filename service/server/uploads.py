"""Upload slots that a trickling client loses to new ones.

MAX_UPLOADS bounds the request bodies being received at once. One shared pool let a single client hold every slot
by opening many connections that each send a byte now and then (140 such sockets kept 45 of 47 other requests at
429). Per-client shares do not help when everyone comes through one proxy or from 127.0.0.1, so the rule follows
the bytes instead: when every slot is taken, a new upload takes the slot of the slowest one that has been open for
``GRACE_S`` and has averaged less than ``MIN_RATE`` bytes per second; that one is answered 408. Only when no upload
is that slow does the new one get 429. An upload at honest speed is never evicted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

__all__ = ["GRACE_S", "MIN_RATE", "RECEIVED", "Upload", "UploadSlots"]

GRACE_S = 0.25
MIN_RATE = 8 * 1024  # bytes per second, averaged since the upload started (64 kbit/s)
RECEIVED = "roiconv.received"  # the ASGI scope key under which the body limit counts the bytes received


@dataclass(eq=False)
class Upload:
    """One body being received: ``scope`` (its byte count is kept there), and ``evicted``, done once its slot was
    given to another upload."""

    scope: dict
    started: float = field(default_factory=time.monotonic)
    evicted: asyncio.Event = field(default_factory=asyncio.Event)

    def rate(self, now: float) -> float:
        """Bytes per second received since the start."""
        return self.scope.get(RECEIVED, 0) / max(now - self.started, 1e-9)


class UploadSlots:
    """At most ``limit`` uploads at once; :meth:`take` may evict the slowest to make room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active: set[Upload] = set()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.active)

    def take(self, scope: dict) -> Upload | None:
        """A slot for the upload of ``scope``, or None when all are taken by uploads at honest speed."""
        if len(self.active) >= self.limit:
            victim = self._slowest(time.monotonic())
            if victim is None:
                return None
            self.active.discard(victim)
            victim.evicted.set()
            self.evictions += 1
        upload = Upload(scope)
        self.active.add(upload)
        return upload

    def give_back(self, upload: Upload) -> None:
        self.active.discard(upload)

    def _slowest(self, now: float) -> Upload | None:
        slow = [u for u in self.active if now - u.started >= GRACE_S and u.rate(now) < MIN_RATE]
        return min(slow, key=lambda u: u.rate(now), default=None)
