"""The worker's consumer: parse the command (dead-letter what cannot be read), then run it.

Not `IdempotentConsumer`: its inbox transaction would stay open for the whole render. The job
row in `render_jobs` is the idempotency guard instead (see `jobs.py`), and the command is acked
only when the job has ended (FastStream acks after this returns; an infrastructure error nacks
it for redelivery).

(No `from __future__ import annotations` here: FastStream reads the handler's annotations at
runtime to inject the raw message.)
"""

from faststream.rabbit.annotations import RabbitMessage
from shared.consumer import read_or_reject
from shared.logging import get_logger, log_context
from shared.messages import RenderRequested
from shared.topology import WORKER_RENDER

from veo_worker.runner import RenderRunner

log = get_logger("WORKER")


class RenderHandler:
    def __init__(self, runner: RenderRunner) -> None:
        self.runner = runner

    async def __call__(self, message: RabbitMessage) -> None:
        command = await read_or_reject(message, RenderRequested, WORKER_RENDER.name)
        if command is None:
            return
        with log_context(
            consumer=WORKER_RENDER.name,
            message_id=message.raw_message.message_id,
            generation_id=str(command.generation_id),
        ):
            await self.runner.run(command)
