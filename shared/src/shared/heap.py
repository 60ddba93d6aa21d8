"""The garbage collector, tuned for a long-running service process.

A service builds most of what it will ever hold at start-up (modules, the app, pools, schemas),
and CPython's cyclic collector walks all of it on every full collection. Measured on the API
under status reads (`make bench`), full collections took 115-580 ms, stalling every request in
flight: they were most of the p99. `settle()`, once the service is up, moves what start-up
built out of the collector's sight (`gc.freeze`), so a full collection walks only what was
made since; and collects the young generation less often, since a request or a message makes
hundreds of short-lived containers that reference counting frees anyway.
"""

from __future__ import annotations

import gc

# Container allocations between young collections (CPython's default: 700).
YOUNG_THRESHOLD = 7_000


def settle() -> None:
    """Call once, when the process has finished starting."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
