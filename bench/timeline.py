"""Where one generation's time goes, from the services' own log lines.

Every line the services write about a generation carries its `generation_id` and a
`timestamp` (`[COMPONENT] Action {context}`). For the generations of one run, each
`[COMPONENT] Action (event or stage)` is a step (repeated ones numbered, in the order the log
files list them); the median gap from the step before it (in that generation's own order) says
which hop holds the time. Nothing here knows the step
names, so it keeps working when the services log differently.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

_DETAIL = ("event", "lifecycle_event", "stage")  # context keys that tell repeated steps apart
_LINE = re.compile(r"^\[(?P<component>[A-Z0-9_.]+)\] (?P<action>[^{]*?) (?P<context>\{.*\})\s*$")


def _events(logs: Path, wanted: set[str]) -> dict[str, dict[str, float]]:
    """generation id → {step: first time (epoch seconds)}."""
    steps: dict[str, dict[str, float]] = defaultdict(dict)
    repeats: dict[str, Counter[str]] = defaultdict(Counter)
    for path in sorted(logs.glob("*.log")):
        with path.open(errors="replace") as lines:
            for line in lines:
                if '"generation_id"' not in line:
                    continue
                match = _LINE.match(line)
                if match is None:
                    continue
                try:
                    context = json.loads(match.group("context"))
                    generation = str(context.get("generation_id"))
                    at = datetime.fromisoformat(context["timestamp"]).timestamp()
                except (ValueError, KeyError, TypeError):
                    continue
                if generation not in wanted:
                    continue
                step = f"[{match.group('component')}] {match.group('action')}"
                detail = next((context[k] for k in _DETAIL if context.get(k)), None)
                if detail:
                    step += f" ({detail})"
                seen = steps[generation]
                counts = repeats[generation]
                counts[step] += 1
                if counts[step] > 1:  # the same step again: a step of its own
                    step += f" #{counts[step]}"
                seen[step] = at
    return steps


def breakdown(
    logs: Path, posted: dict[str, float], arrived: dict[str, float]
) -> list[dict[str, Any]]:
    """Median offset from the POST and median gap from the previous step, for every step seen
    in at least half the generations; the webhook's arrival last. `posted`/`arrived`: wall-
    clock times (epoch seconds) by generation id."""
    steps = _events(logs, set(posted))
    offsets: dict[str, list[float]] = defaultdict(list)
    gaps: dict[str, list[float]] = defaultdict(list)
    for generation, start in posted.items():
        timeline = list(steps.get(generation, {}).items())
        if generation in arrived:
            timeline.append(
                ("(receiver) generation.completed webhook arrives", arrived[generation])
            )
        timeline.sort(key=lambda kv: kv[1])
        previous = start
        for step, at in timeline:
            offsets[step].append(1000 * (at - start))
            gaps[step].append(1000 * (at - previous))
            previous = at
    enough = max(1, len(posted) // 2)
    rows = [
        {
            "step": step,
            "n": len(values),
            "median_offset_ms": round(statistics.median(values), 1),
            "median_gap_ms": round(statistics.median(gaps[step]), 1),
        }
        for step, values in offsets.items()
        if len(values) >= enough
    ]
    return sorted(rows, key=lambda r: r["median_offset_ms"])


def duplicates(logs: Path) -> dict[str, int]:
    """Deliveries a consumer's inbox turned away as already handled (`Duplicate ignored`), per
    consumer, over the services' logs so far: each is a message that went out twice. A few
    come from a relay's safety net after a crash; thousands mean work done twice (as when a
    busy relay's rows were taken over and then published by it as well)."""
    counts: Counter[str] = Counter()
    for path in sorted(logs.glob("*.log")):
        with path.open(errors="replace") as lines:
            for line in lines:
                if "Duplicate ignored" not in line:
                    continue
                match = _LINE.match(line)
                try:
                    context = json.loads(match.group("context")) if match else {}
                except ValueError:
                    context = {}
                counts[str(context.get("consumer", "?"))] += 1
    return dict(counts.most_common())
