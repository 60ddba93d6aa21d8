"""What every benchmark shares: percentiles, machine facts, result rows and JSON files."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
# BENCH_RESULTS_DIR: a scratch run (one phase, while working on it) writes there instead, and
# leaves bench/README.md alone.
SCRATCH = bool(os.environ.get("BENCH_RESULTS_DIR"))
RESULTS = Path(os.environ["BENCH_RESULTS_DIR"]) if SCRATCH else BENCH_DIR / "results"
REPO = BENCH_DIR.parent


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Iterable[float]) -> dict[str, float | int | None]:
    values = [s * 1000 for s in seconds]
    return {
        "n": len(values),
        "p50_ms": _round(percentile(values, 50)),
        "p90_ms": _round(percentile(values, 90)),
        "p99_ms": _round(percentile(values, 99)),
        "max_ms": _round(max(values) if values else None),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def machine() -> dict[str, Any]:
    """Facts to read every figure against: the machine is shared, so its load matters."""
    load1, load5, load15 = os.getloadavg()
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)],
    }


@dataclass
class Row:
    """One line of the README table: a figure beside its same-run baseline and its target."""

    bench: str
    figure: str
    value: float | None
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    target: str | None = None
    # met: True/False, or None when there is no target or nothing was measured.
    met: bool | None = None
    note: str | None = None
    ratio: float | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ratio is None and self.value is not None and self.baseline_value:
            self.ratio = round(self.value / self.baseline_value, 3)

    def rebase(self, label: str, value: float | None) -> None:
        """Another measurement of the baseline replaces the first: label, value and ratio."""
        self.baseline, self.baseline_value, self.ratio = label, value, None
        self.__post_init__()


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def rows_json(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


class CpuMeter:
    """CPU seconds spent by named processes and their children between `start` and `stop`.

    Children are looked up again at `stop`, so a PostgreSQL backend opened meanwhile counts
    from its birth; one that ended meanwhile is lost (rare: the pools keep their connections).
    """

    def __init__(self, pids: dict[str, int], alone: frozenset[str] = frozenset({"driver"})) -> None:
        self.pids = pids
        self.alone = alone  # names whose children are counted elsewhere (the driver's services)
        self._start: dict[str, dict[int, float]] = {}
        self._t0 = 0.0
        self._machine: Any = None
        self.wall = 0.0
        self.machine_busy = 0.0  # CPU seconds the whole machine spent, every process together

    def start(self) -> None:
        self._start = {name: self._cpu(name, pid) for name, pid in self.pids.items()}
        self._machine = psutil.cpu_times()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        self.wall = time.monotonic() - self._t0
        now_machine = psutil.cpu_times()
        idle = ("idle", "iowait")
        self.machine_busy = round(
            sum(
                getattr(now_machine, f) - getattr(self._machine, f)
                for f in now_machine._fields
                if f not in idle and f not in ("guest", "guest_nice")  # already in user/nice
            ),
            3,
        )
        spent = {}
        for name, pid in self.pids.items():
            before = self._start.get(name, {})
            now = self._cpu(name, pid)
            spent[name] = round(sum(t - before.get(p, 0.0) for p, t in now.items()), 3)
        return spent

    def _cpu(self, name: str, pid: int) -> dict[int, float]:
        return _cpu_by_pid(pid, children=name not in self.alone)

    def cores(self, spent: dict[str, float]) -> dict[str, float]:
        """Cores used per process over the window, and by everything else on the machine."""
        wall = self.wall or 1.0
        out = {name: round(s / wall, 2) for name, s in spent.items()}
        out["other processes"] = round(max(0.0, self.machine_busy - sum(spent.values())) / wall, 2)
        return out


def _cpu_by_pid(pid: int, children: bool = True) -> dict[int, float]:
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)] if children else [root]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for proc in family:
        try:
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return out


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
