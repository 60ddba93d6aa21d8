"""The `reelflow` command: run services, migrate, manage users and their API keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from shared.logging import configure_logging, get_logger, set_service
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
    keys = sub.add_parser("keys", help="a user's API keys: create, revoke, list")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = keys_sub.add_parser("create", help="another key for a user, printed once")
    kcreate.add_argument("user_id")
    kcreate.add_argument("--name", default=None, help="what the key is for")
    krevoke = keys_sub.add_parser("revoke", help="revoke a key: it never works again")
    krevoke.add_argument("key", help="the key's id, or its prefix (rf_live_XXXXXXXX)")
    klist = keys_sub.add_parser("list", help="a user's keys (prefixes, never the keys)")
    klist.add_argument("user_id")
    dlq = sub.add_parser("dlq", help="dead-letter queues: list, show, replay")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_sub.add_parser("list", help="every DLQ and how many messages it holds")
    show = dlq_sub.add_parser("show", help="the dead messages of a queue, with why they died")
    show.add_argument("queue", help="a work queue (e.g. worker.render) or its .dlq")
    show.add_argument("--limit", type=int, default=20)
    replay = dlq_sub.add_parser("replay", help="send dead messages back to their work queue")
    replay.add_argument("queue")
    replay.add_argument("--limit", type=int, default=1000)
    replay.add_argument("--message-id", default=None)
    gens = sub.add_parser("generations", help="inspect generations")
    gens_sub = gens.add_subparsers(dest="generations_command", required=True)
    gshow = gens_sub.add_parser("show", help="state, timeline, job, deliveries and messages")
    gshow.add_argument("id")
    outbox = sub.add_parser("outbox", help="the transactional outbox")
    outbox.add_subparsers(dest="outbox_command", required=True).add_parser(
        "status", help="unpublished rows and the oldest one's age"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"reelflow: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    set_service(args.command if args.command in SERVICES else "reelflow")  # JSON lines' service
    try:
        with asyncio.Runner(loop_factory=_loop_factory(args.command)) as runner:
            return runner.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        return 130


def _loop_factory(command: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The services run on uvloop (installed with uvicorn[standard]), as uvicorn and
    `faststream run` themselves would pick: its sockets and callbacks cost less than the
    stdlib loop's Python transports (in the bench, ~10% of the CPU per generation at a modest
    load). The supervisor and the one-shot commands keep the stdlib loop."""
    if command not in SERVICES:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.migrate import migrate

    if args.command == "migrate":
        await migrate(settings)
        log.info("Database migrated")
        return 0
    if args.command in ("users", "keys"):
        from reelflow.users import run

        return await run(settings, args.command, args)
    if args.command in ("dlq", "generations", "outbox"):
        return await _operate(args, settings)
    if args.command == "run":
        from reelflow.supervisor import supervise

        if not args.no_migrate:
            await migrate(settings)
        return await supervise(settings, SERVICES)
    await _serve(args.command)(settings)
    return 0


async def _operate(args: argparse.Namespace, settings: Settings) -> int:
    from reelflow import dlq, inspect

    if args.command == "dlq":
        try:
            if args.dlq_command == "list":
                dlq.print_list(await dlq.list_dlqs(settings.amqp_url))
            elif args.dlq_command == "show":
                dlq.print_show(await dlq.show(settings.amqp_url, args.queue, args.limit))
            else:
                count = await dlq.replay(
                    settings.amqp_url, args.queue, limit=args.limit, message_id=args.message_id
                )
                print(f"replayed {count} message(s) to {args.queue.removesuffix('.dlq')}")
        except KeyError:
            print(f"reelflow: {args.queue!r} is not one of Reelflow's queues", file=sys.stderr)
            return 2
        return 0
    if args.command == "generations":
        report = await inspect.generation_report(settings, args.id)
        if report is None:
            print(f"reelflow: no generation {args.id}", file=sys.stderr)
            return 1
        inspect.dump(report)
        return 0
    inspect.dump(await inspect.outbox_status(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
