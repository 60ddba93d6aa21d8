"""Profiles of the services under load: `py-spy record` attached to each process (sampling, so
the services run unmodified), reduced to the top costs per service.

py-spy's raw output has one line per distinct stack, `frame;frame;…;leaf count`, each frame
`function (file:line)`. Two recordings per process: GIL-holding samples (the Python code an
event loop spends its one core on) and every non-idle sample (also C code running without the
GIL in threads: video probing, thumbnails).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_SITE = re.compile(r"/site-packages/(?P<pkg>[^/]+)/")
_OWN = re.compile(r"/(?:services/[^/]+/src|shared/src|src)/(?P<mod>[a-z_]+(?:/[a-z_]+)*)\.py$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<mod>[a-z_]+)")
# Frames at the root of every stack (the entry point, the event loop, thread bootstrap): on
# (nearly) every sample, so their inclusive share says nothing.
_ROOTS = {"reelflow", "reelflow.cli", "asyncio", "runpy", "threading", "runners"}


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def record(
    pid: int, seconds: int, out: Path, *, gil: bool = False, rate: int = 100
) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` (py-spy needs root, or ptrace rights, to attach).

    `gil`: only samples of the thread holding the GIL, i.e. Python code running. Without it,
    every thread not waiting in a known idle call counts, which on a busy machine includes a
    thread preempted inside a syscall (a socket write that woke its reader, say): real wall
    time, but not this process's CPU."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (uv sync --dev)")
    return subprocess.Popen(
        [
            *(exe, "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate)),
            *("--nonblocking", "--full-filenames", "-f", "raw", "-o", str(out)),
            *(("--gil",) if gil else ()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def where(file: str) -> str:
    """The module a frame's file belongs to: our own modules by dotted name, libraries by
    package, the standard library by top-level module."""
    if match := _SITE.search(file):
        return match.group("pkg").removesuffix(".py")
    if match := _OWN.search(file):
        return match.group("mod").replace("/", ".")
    if match := _STDLIB.search(file):
        return match.group("mod")
    return file.rsplit("/", 1)[-1] or file


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for raw in stack.split(";"):
        match = _FRAME.match(raw.strip())
        if match:
            out.append((match.group("func"), where(match.group("file"))))
    return out


def analyse(path: Path, top: int = 20) -> dict[str, Any]:
    """Self time by function, and inclusive time by library and by our own module."""
    samples = 0
    leaf: Counter[str] = Counter()
    library: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        samples += count
        func, module = frames[-1]
        leaf[f"{module}:{func}"] += count
        modules = {m for _, m in frames} - _ROOTS
        for module in modules:
            if "." in module or module in {"api", "orchestrator", "veo_worker", "notifier"}:
                own[module] += count
            else:
                library[module] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"name": name, "share": round(count / samples, 3)}
            for name, count in counter.most_common(top)
        ]

    return {
        "samples": samples,
        "self_by_function": share(leaf),
        "inclusive_by_library": share(library),
        "inclusive_by_own_module": share(own),
    }


@contextlib.asynccontextmanager
async def sampling(pid: int, seconds: int, out: Path) -> AsyncIterator[dict[str, Any]]:
    """GIL samples of `pid` for `seconds` from the start of the block, reduced when both the
    block and the recording are over (keep `seconds` within the block's length)."""
    result: dict[str, Any] = {}
    recorder = record(pid, seconds, out, gil=True) if py_spy() else None
    try:
        yield result
    finally:
        if recorder is None:
            result["error"] = "py-spy is not installed"
        else:
            _, err = await asyncio.to_thread(recorder.communicate)
            reduced = await asyncio.to_thread(_reduce, out) if recorder.returncode == 0 else None
            if reduced is not None:
                result.update(reduced)
            else:
                result["error"] = err.decode()[-300:] or "py-spy wrote nothing"


def _reduce(out: Path) -> dict[str, Any] | None:
    return analyse(out) if out.exists() else None
