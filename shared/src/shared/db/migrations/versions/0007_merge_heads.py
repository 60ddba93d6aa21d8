"""Merge the parallel branches 0002-0006 into one history.

Revision ID: 0007_merge_heads
Revises: 0002_veo_jobs, 0003_webhooks, 0004_chat, 0005_api_keys, 0006_telemetry
Create Date: 2026-11-29
"""

from collections.abc import Sequence

revision: str = "0007_merge_heads"
down_revision: str | Sequence[str] | None = (
    "0002_veo_jobs",
    "0003_webhooks",
    "0004_chat",
    "0005_api_keys",
    "0006_telemetry",
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
