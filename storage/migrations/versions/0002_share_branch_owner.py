"""Owners, links, branches, comparisons, and runs recorded from their start: History lists a
browser's own runs without loading event blobs, a branch points at its parent, a comparison
is one shareable row, and a run killed mid-way stays visible as "interrupted".

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("new_tokens", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("tokens_per_s", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("owner", sa.String(64)))
        batch.add_column(sa.Column("public", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("favourite", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("parent_id", sa.String(32)))
        batch.add_column(sa.Column("parent_position", sa.Integer))
        batch.create_foreign_key("fk_runs_parent", "runs", ["parent_id"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_runs_parent_id", ["parent_id"])
        batch.create_index("ix_runs_owner_created", ["owner", "created_at"])
        batch.alter_column("events", nullable=True)            # a running run has none yet
    runs = sa.table("runs", sa.column("id", sa.String), sa.column("metrics", sa.JSON),
                    sa.column("new_tokens", sa.Integer), sa.column("tokens_per_s", sa.Float))
    connection = op.get_bind()
    for run_id, metrics in connection.execute(sa.select(runs.c.id, runs.c.metrics)).all():
        metrics = metrics or {}
        connection.execute(runs.update().where(runs.c.id == run_id).values(
            new_tokens=int(metrics.get("new_tokens", 0) or 0), tokens_per_s=float(metrics.get("tokens_per_s", 0) or 0)))
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("owner", sa.String(64)),
        sa.Column("public", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("title", sa.String(200), nullable=False, server_default=""),
        sa.Column("run_ids", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
    )
    op.create_index("ix_comparisons_created_at", "comparisons", ["created_at"])
    op.create_index("ix_comparisons_owner", "comparisons", ["owner"])


def downgrade() -> None:
    op.drop_table("comparisons")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_owner_created")
        batch.drop_index("ix_runs_parent_id")
        batch.drop_constraint("fk_runs_parent", type_="foreignkey")
        for name in ("parent_position", "parent_id", "favourite", "public", "owner", "tokens_per_s", "new_tokens"):
            batch.drop_column(name)
