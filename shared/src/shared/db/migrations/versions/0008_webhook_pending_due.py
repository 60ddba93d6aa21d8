"""webhooks: pending deliveries by due time (the notifier's sweeper)

Revision ID: 0008_webhook_pending_due
Revises: 0007_merge_heads
Create Date: 2026-11-29 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_webhook_pending_due"
down_revision: str | None = "0007_merge_heads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A pending delivery's `next_attempt_at` is its retry's due time, or the end of the lease
    # of the notifier working on it: the sweeper takes up those whose time has passed.
    op.create_index(
        "ix_webhook_deliveries_pending_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_pending_due", table_name="webhook_deliveries")
