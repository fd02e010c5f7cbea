"""Leases with fencing tokens: the `leases` table, and the token of the writer on deployments and events.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seen = sa.inspect(op.get_bind())
    present = set(seen.get_table_names())
    if "leases" not in present:  # a store half-upgraded by hand may have some of this already
        _create_leases()
    for table in ("deployments", "events"):
        if "fencing_token" not in {c["name"] for c in seen.get_columns(table)}:
            op.add_column(table, sa.Column("fencing_token", sa.Integer()))


def _create_leases() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(300), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.Column("renewed_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("safeship does not downgrade a store; restore a copy made before the upgrade")
