"""veo jobs: the worker's scheduler columns on render_jobs, and the global submission window

Revision ID: 0002_veo_jobs
Revises: 0001
Create Date: 2026-11-30 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_veo_jobs"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("render_jobs", sa.Column("due_at", _TS, nullable=True))
    op.add_column("render_jobs", sa.Column("lease_owner", sa.String(length=100), nullable=True))
    op.add_column("render_jobs", sa.Column("lease_until", _TS, nullable=True))
    op.add_column("render_jobs", sa.Column("submitted_at", _TS, nullable=True))
    op.add_column("render_jobs", sa.Column("deadline_at", _TS, nullable=True))
    op.add_column("render_jobs", sa.Column("next_poll_at", _TS, nullable=True))
    op.add_column(
        "render_jobs", sa.Column("poll_count", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "render_jobs",
        sa.Column("transient_errors", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_render_jobs_active",
        "render_jobs",
        ["provider", "status", "created_at"],
        postgresql_where=sa.text("status IN ('queued', 'submitting', 'running')"),
    )
    op.create_table(
        "submit_windows",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("stamps", sa.ARRAY(_TS), nullable=False, server_default="{}"),
        sa.Column("paused_until", _TS, nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("submit_windows")
    op.drop_index("ix_render_jobs_active", table_name="render_jobs")
    for column in (
        "transient_errors",
        "poll_count",
        "next_poll_at",
        "deadline_at",
        "submitted_at",
        "lease_until",
        "lease_owner",
        "due_at",
    ):
        op.drop_column("render_jobs", column)
