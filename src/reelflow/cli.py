"""The `reelflow` command: run services, migrate, manage users."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from shared.logging import configure_logging, get_logger
from shared.settings import Settings, SettingsError, load_settings

log = get_logger("CLI")

SERVICES = ("api", "orchestrator", "worker", "notifier")


def _serve(name: str) -> Callable[[Settings], Coroutine[Any, Any, None]]:
    # Imported lazily: a service's dependencies load only in the process that runs it.
    if name == "api":
        from api.main import serve
    elif name == "orchestrator":
        from orchestrator.main import serve
    elif name == "worker":
        from veo_worker.main import serve
    else:
        from notifier.main import serve
    return serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reelflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="migrate, then run all four services under one supervisor")
    run.add_argument("--no-migrate", action="store_true")
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service alone")
    sub.add_parser("migrate", help="create the database if missing and apply migrations")
    users = sub.add_parser("users", help="manage users")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    create = users_sub.add_parser("create", help="create a user and print its API key once")
    create.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"reelflow: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        return asyncio.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.migrate import migrate

    if args.command == "migrate":
        await migrate(settings)
        log.info("Database migrated")
        return 0
    if args.command == "users":
        from reelflow.users import create_user

        user_id, key = await create_user(settings, args.name)
        print(f"user {user_id} created; API key (shown once): {key}")
        return 0
    if args.command == "run":
        from reelflow.supervisor import supervise

        if not args.no_migrate:
            await migrate(settings)
        return await supervise(settings, SERVICES)
    await _serve(args.command)(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
