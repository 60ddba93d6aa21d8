"""Baseline for status reads: a bare FastAPI route doing one asyncpg SELECT by primary key.

The same table and row as `GET /v1/generations/{id}`, no key check, no ORM, the row returned as
FastAPI serialises a dict. Served by uvicorn in a process of its own:

    python -m bench.baseline_api --dsn postgresql://… --port 8123 [--loop uvloop|asyncio]

`--loop uvloop` is what `uvicorn app:app` gives by default; `asyncio` is the loop the `reelflow api`
process runs on (it starts uvicorn inside `asyncio.run`), to tell the loop's share apart.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI, HTTPException

QUERY = "SELECT * FROM generations WHERE id = $1"


def create_app(dsn: str, pool_size: int = 10) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
        yield
        await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/generations/{generation_id}")
    async def read(generation_id: uuid.UUID) -> dict[str, Any]:
        row = await app.state.pool.fetchrow(QUERY, generation_id)
        if row is None:
            raise HTTPException(404)
        return dict(row)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.dsn),
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
