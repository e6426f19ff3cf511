"""blocklist_versions: a version that loosens the one in force waits, `pending`, for a
reviewer's approval (issue 15: removing a concept, or changing its mapping, is reviewed like
adding one)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NAME = 'ck_blocklist_versions_state'


def upgrade() -> None:
    with op.batch_alter_table('blocklist_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approved_by_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_blocklist_versions_approved_by_id_actors'), 'actors',
                                    ['approved_by_id'], ['id'])
        batch_op.drop_constraint(batch_op.f(NAME), type_='check')
        batch_op.create_check_constraint(batch_op.f(NAME), "state IN ('published', 'revoked', 'pending')")


def downgrade() -> None:
    ids = op.get_bind().execute(sa.text(
        "SELECT id FROM blocklist_versions WHERE state = 'pending' OR approved_by_id IS NOT NULL")).scalars().all()
    if ids:
        raise RuntimeError(f"cannot downgrade below 0007: blocklist versions {', '.join(map(str, ids))} went "
                           "through a loosening review, which revision 0006 cannot record")
    with op.batch_alter_table('blocklist_versions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(NAME), type_='check')
        batch_op.create_check_constraint(batch_op.f(NAME), "state IN ('published', 'revoked')")
        batch_op.drop_constraint(batch_op.f('fk_blocklist_versions_approved_by_id_actors'), type_='foreignkey')
        batch_op.drop_column('approved_at')
        batch_op.drop_column('approved_by_id')
