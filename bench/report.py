"""The README table and the latency curve, from the rows and points of a run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, RESULTS, Row

START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    return f"{text} {unit}".strip()


def table(rows: list[Row]) -> str:
    lines = [
        "| bench | figure | value | baseline (same run) | ratio | target | met? |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        base = "—"
        if r.baseline:
            base = f"{_num(r.baseline_value, r.unit)} ({r.baseline})"
        met = {True: "**met**", False: "not met", None: "—"}[r.met]
        figure = r.figure + (f" ({r.note})" if r.note else "")
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "—"
        lines.append(
            f"| {r.bench} | {figure} | {_num(r.value, r.unit)} | {base} | {ratio} "
            f"| {r.target or '—'} | {met} |"
        )
    return "\n".join(lines)


def profile_section(profile: dict[str, Any]) -> str:
    if not profile.get("services"):
        return "No profile this run: " + str(profile.get("note", "py-spy did not run"))
    out = [
        f"py-spy, {profile.get('seconds')} s at {profile.get('concurrency')} generations in "
        f"flight ({profile.get('rate_while_profiled')}/s while profiled; other processes on "
        f"the machine used {profile.get('other_processes_cores')} cores meanwhile). Shares of "
        "each process's GIL-holding samples, i.e. of its Python time: *self* is the function "
        "itself, *inclusive* anywhere on the stack. *Threads* is the top of the all-threads "
        "recording (C code in worker threads, and time preempted inside syscalls).",
        "",
    ]
    for service, data in profile["services"].items():
        gil, active = data.get("gil", {}), data.get("active", {})
        if "self_by_function" not in gil:
            out.append(f"- **{service}**: {gil.get('error', 'no samples')}")
            continue
        top_self = ", ".join(f"`{f['name']}` {f['share']:.0%}" for f in gil["self_by_function"][:6])
        libs = ", ".join(f"{f['name']} {f['share']:.0%}" for f in gil["inclusive_by_library"][:7])
        own = ", ".join(
            f"`{f['name']}` {f['share']:.0%}" for f in gil["inclusive_by_own_module"][:6]
        )
        threads = ", ".join(
            f"`{f['name']}` {f['share']:.0%}" for f in active.get("self_by_function", [])[:3]
        )
        out.append(
            f"- **{service}** ({data.get('cores', '?')} cores, {gil['samples']} GIL samples). "
            f"Self: {top_self}. Inclusive, libraries: {libs}. Inclusive, ours: {own}. "
            f"Threads: {threads}."
        )
    return "\n".join(out)


def timeline_section(steps: list[dict[str, Any]]) -> str:
    lines = [
        "| step (from the services' logs) | median since POST | median since the step before |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| `{s['step']}` | {s['median_offset_ms']:,.0f} ms | {s['median_gap_ms']:,.0f} ms |"
        for s in steps
    ]
    return "\n".join(lines)


def phase_profiles_section(profiles: dict[str, Any]) -> str:
    """The hot process of the other phases (GIL samples), one line each."""
    out = []
    for name, data in profiles.items():
        if "self_by_function" not in data:
            out.append(f"- **{name}**: {data.get('error', 'no samples')}")
            continue
        top_self = ", ".join(
            f"`{f['name']}` {f['share']:.0%}" for f in data["self_by_function"][:5]
        )
        libs = ", ".join(f"{f['name']} {f['share']:.0%}" for f in data["inclusive_by_library"][:6])
        own = ", ".join(
            f"`{f['name']}` {f['share']:.0%}" for f in data["inclusive_by_own_module"][:6]
        )
        out.append(
            f"- **{name}** ({data['samples']} GIL samples in {data.get('seconds')} s). "
            f"Self: {top_self}. Inclusive, libraries: {libs}. Inclusive, ours: {own}."
        )
    return "\n".join(out)


def update_readme(body: str, readme: Path = BENCH_DIR / "README.md") -> None:
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    readme.write_text(pattern.sub(lambda _: f"{START}\n{body}\n{END}", text))


def curve(
    points: dict[str, list[dict[str, Any]]],
    predicted: list[dict[str, Any]] | None = None,
    out: Path = RESULTS / "latency_curve.png",
) -> Path:
    """Latency (p50, p99) and throughput against generations in flight, per replica count (and
    the p50 Little's law gives where a point was too long to measure); and where the CPU went
    at each point of the one-replica run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr, cpu) = plt.subplots(1, 3, figsize=(16, 4.8))
    for label, series in points.items():
        measured = [p for p in series if p.get("latency", {}).get("p50_ms") is not None]
        if not measured:
            continue
        xs = [p["concurrency"] for p in measured]
        lat.plot(xs, [p["latency"]["p50_ms"] for p in measured], "o-", label=f"{label} p50")
        lat.plot(xs, [p["latency"]["p99_ms"] for p in measured], "s--", label=f"{label} p99")
        thr.plot(xs, [p["rate_per_s"] for p in measured], "o-", label=label)
        littles = [p for p in measured if p.get("littles_law_p50_ms")]
        if littles and label == next(iter(points)):
            lat.plot(
                [p["concurrency"] for p in littles],
                [p["littles_law_p50_ms"] for p in littles],
                ":",
                color="grey",
                label=f"{label}: in flight ÷ rate (Little's law)",
            )
    if predicted:
        lat.plot(
            [p["concurrency"] for p in predicted],
            [p["p50_ms"] for p in predicted],
            "o:",
            markerfacecolor="none",
            color="grey",
            label="p50 by Little's law (not measured)",
        )
    for axis in (lat, thr):
        axis.set_xscale("log")
        axis.set_xlabel("generations in flight (closed loop)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    lat.set_yscale("log")
    lat.set_ylabel("POST → completed webhook (ms)")
    lat.set_title("latency")
    thr.set_ylabel("generations/s")
    thr.set_title("throughput")
    first = next(iter(points.values()), [])
    measured = [p for p in first if p.get("cpu_cores")]
    if measured:
        last = ["driver", "other processes"]
        names = [n for n in measured[0]["cpu_cores"] if n not in last] + last
        bottom = [0.0] * len(measured)
        labels = [str(p["concurrency"]) for p in measured]
        for name in names:
            values = [p["cpu_cores"].get(name, 0.0) for p in measured]
            cpu.bar(labels, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        cpu.axhline(2.0, color="black", linewidth=0.8, linestyle=":")
        cpu.set_xlabel("generations in flight (1 replica each)")
        cpu.set_ylabel("CPU cores used")
        cpu.set_title("where the CPU goes (machine has 2)")
        cpu.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
