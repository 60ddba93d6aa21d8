"""render jobs: the queue position last reported for a queued job

Revision ID: 0009_render_queue_position
Revises: 0008_webhook_pending_due
Create Date: 2026-12-07 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_render_queue_position"
down_revision: str | None = "0008_webhook_pending_due"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The worker reports a queued job's place again as the queue moves; this is the place it
    # last reported, so each move is reported once (by whichever worker process sees it).
    op.add_column("render_jobs", sa.Column("queue_position", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("render_jobs", "queue_position")
