"""chat: a generation's events in order (timeline, SSE resumption)

Revision ID: 0004_chat
Revises: 0001
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_chat"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The outbox holds every lifecycle event a generation had, written with its transition:
    # read by correlation id (the generation) in order, it is the generation's timeline.
    op.create_index("ix_outbox_correlation", "outbox", ["correlation_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outbox_correlation", table_name="outbox")
