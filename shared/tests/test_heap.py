"""`shared.heap.settle`: what start-up built leaves the collector's sight; young collections
come less often. Run in a child process, so the test run's own collector is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import gc, json
from shared.heap import YOUNG_THRESHOLD, settle
built = [[i] for i in range(50_000)]  # what a service builds at start-up: containers, kept
before = (gc.get_freeze_count(), gc.get_threshold()[0])
settle()
after = (gc.get_freeze_count(), gc.get_threshold()[0])
made_later = [[i] for i in range(10)]
tracked_later = sum(1 for o in gc.get_objects() if o is made_later)
print(json.dumps({"before": before, "after": after, "young": YOUNG_THRESHOLD,
                  "later_tracked": tracked_later, "kept": len(built)}))
"""


def test_settle_freezes_what_start_up_built_and_spaces_young_collections() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    frozen_before, young_before = found["before"]
    frozen_after, young_after = found["after"]
    assert frozen_before == 0
    assert frozen_after >= 50_000  # the start-up containers are out of the collector's sight
    assert (young_before, young_after) == (700, found["young"])
    assert found["later_tracked"] == 1  # what is made afterwards is still collected as usual
    assert found["kept"] == 50_000
