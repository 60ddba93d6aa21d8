"""telemetry: each generation's trace context and when its status last changed; each render
job's trace context

Revision ID: 0006_telemetry
Revises: 0001
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006_telemetry"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The W3C context (traceparent, tracestate) the generation was created in: later moves
    # made in other traces announce their events in this one (one trace per generation).
    op.add_column("generations", sa.Column("trace_context", JSONB(), nullable=True))
    # When the current status began (progress updates move updated_at, not this): the
    # time-in-status metric. NULL on rows from before: created_at stands in.
    op.add_column(
        "generations", sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True)
    )
    # The context of the render command's consumer: the scheduler's spans (submit, polls,
    # download, upload) join the generation's trace whenever and wherever the job runs.
    op.add_column("render_jobs", sa.Column("trace_context", JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("render_jobs", "trace_context")
    op.drop_column("generations", "status_changed_at")
    op.drop_column("generations", "trace_context")
