#!/usr/bin/env bash
# Make sure PostgreSQL and RabbitMQ answer on their standard local ports: start them where they
# are installed but stopped; where they are absent, say exactly how to get them.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
  for _ in $(seq "$2"); do port_open "$1" && return 0; sleep 1; done
  return 1
}

missing=()

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "[SERVICES] Starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >&2 || true
  elif command -v pg_ctl >/dev/null 2>&1 && [ -n "${PGDATA:-}" ]; then
    pg_ctl -D "$PGDATA" -l "$PGDATA/server.log" start >&2 || true
  fi
  wait_port 5432 30 || missing+=("PostgreSQL (127.0.0.1:5432)")
fi

if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "[SERVICES] Starting RabbitMQ" >&2
    rabbitmq-server -detached >&2 || true
  fi
  wait_port 5672 60 || missing+=("RabbitMQ (127.0.0.1:5672)")
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "Reelflow needs these services, which are not running and could not be started:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  echo "Start them with Docker:   docker compose -f deploy/compose.yaml up -d" >&2
  echo "or install the OS packages (Debian/Ubuntu): apt-get install postgresql rabbitmq-server" >&2
  exit 1
fi
