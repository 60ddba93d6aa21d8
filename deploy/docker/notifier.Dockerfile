# syntax=docker/dockerfile:1
# The notifier image. Build from the repository root:
#   docker build -f deploy/docker/notifier.Dockerfile -t reelflow/notifier .
# The four service Dockerfiles share one shape (tests/deploy/test_dockerfiles.py keeps them in
# step): a build stage that installs the locked dependencies before the source, and a small
# runtime stage with the virtual environment only, run as a non-root user.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11-slim-bookworm AS build
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# 1. Dependencies only, from the lock file: this layer changes only with uv.lock or a
#    pyproject.toml, not with every edit of the source. Every member's pyproject.toml is
#    needed for uv to read the workspace; only this service's packages are installed.
COPY uv.lock pyproject.toml ./
COPY shared/pyproject.toml shared/
COPY services/api/pyproject.toml services/api/
COPY services/orchestrator/pyproject.toml services/orchestrator/
COPY services/veo-worker/pyproject.toml services/veo-worker/
COPY services/notifier/pyproject.toml services/notifier/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package reelflow-notifier
# 2. The source: the shared library, this service, and the `reelflow` command (without its
#    dependencies on the other services, which this image does not carry).
COPY shared/ shared/
COPY services/notifier/ services/notifier/
COPY src/ src/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package reelflow-notifier \
    && uv pip install --python /app/.venv/bin/python --no-deps --no-cache .

FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 reelflow \
    && useradd --system --uid 10001 --gid reelflow --home-dir /app --no-create-home reelflow \
    && mkdir -p /app/var/media \
    && chown reelflow:reelflow /app/var/media
COPY --from=build /app/.venv /app/.venv
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json \
    API_HOST=0.0.0.0 \
    METRICS_HOST=0.0.0.0 \
    LOCAL_STORAGE_DIR=/app/var/media
USER 10001:10001
EXPOSE 9103
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NOTIFIER_METRICS_PORT', '9103') + '/healthz', timeout=2)"]
CMD ["reelflow", "notifier"]
