"""approval_policies: versioned minimum evidence for approvals (issue 15)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'approval_policies',
        sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('min_ua', sa.Float(), nullable=True),
        sa.Column('min_ira', sa.Float(), nullable=True),
        sa.Column('min_cra', sa.Float(), nullable=True),
        sa.Column('created_by_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'], name=op.f('fk_approval_policies_created_by_id_actors')),
        sa.PrimaryKeyConstraint('version', name=op.f('pk_approval_policies')),
    )


def downgrade() -> None:
    n = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM approval_policies")).scalar()
    if n:
        raise RuntimeError(f"cannot downgrade below 0006: {n} approval policy versions would be lost")
    op.drop_table('approval_policies')
