"""api keys: several per user, revocable, last use recorded; rate buckets; confirmation time

Revision ID: 0005_api_keys
Revises: 0001

Every user's existing key (its SHA-256 and prefix on `users`) moves into `api_keys`, so keys
handed out before keep working; the copies on `users` are cleared (nothing reads them now, and a
revoked key must not live on anywhere). `rate_buckets` holds the per-key token buckets shared by
every API instance. `generations.confirmed_at` dates the video seconds a user spent, for the
daily quota.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_api_keys"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256", name="uq_api_keys_sha256"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.execute(
        "INSERT INTO api_keys (id, user_id, prefix, sha256, name, created_at) "
        "SELECT gen_random_uuid(), id, api_key_prefix, api_key_sha256, 'first key', created_at "
        "FROM users WHERE api_key_sha256 IS NOT NULL"
    )
    op.alter_column("users", "api_key_prefix", nullable=True)
    op.alter_column("users", "api_key_sha256", nullable=True)
    op.execute("UPDATE users SET api_key_prefix = NULL, api_key_sha256 = NULL")

    op.create_table(
        "rate_buckets",
        sa.Column(
            "key_id",
            sa.Uuid(),
            sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        prefixes=["UNLOGGED"],
    )

    op.add_column("generations", sa.Column("confirmed_at", _TS, nullable=True))
    # Generations already past confirmation count from their last change (the best date known).
    op.execute(
        "UPDATE generations SET confirmed_at = updated_at "
        "WHERE status IN ('confirmed', 'processing', 'completed') "
        "OR (status = 'failed' AND spec IS NOT NULL)"
    )
    op.create_index("ix_generations_user_confirmed", "generations", ["user_id", "confirmed_at"])


def downgrade() -> None:
    op.drop_index("ix_generations_user_confirmed", table_name="generations")
    op.drop_column("generations", "confirmed_at")
    op.drop_table("rate_buckets")
    # Each user gets back its oldest key that still works; one without gets a hash no key has.
    op.execute(
        "UPDATE users u SET api_key_prefix = k.prefix, api_key_sha256 = k.sha256 FROM ("
        "  SELECT DISTINCT ON (user_id) user_id, prefix, sha256 FROM api_keys"
        "  WHERE revoked_at IS NULL ORDER BY user_id, created_at"
        ") k WHERE k.user_id = u.id"
    )
    op.execute(
        "UPDATE users SET api_key_prefix = 'rf_none', "
        "api_key_sha256 = md5(id::text) || md5(random()::text) WHERE api_key_sha256 IS NULL"
    )
    op.alter_column("users", "api_key_sha256", nullable=False)
    op.alter_column("users", "api_key_prefix", nullable=False)
    op.drop_index("ix_api_keys_prefix", table_name="api_keys")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_table("api_keys")
