"""actors.disabled_at: an admin can disable an account (issue 15); a disabled actor acts no more

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('actors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    names = op.get_bind().execute(sa.text(
        "SELECT name FROM actors WHERE disabled_at IS NOT NULL ORDER BY id")).scalars().all()
    if names:
        raise RuntimeError(f"cannot downgrade below 0008: actors {', '.join(names)} are disabled, which revision "
                           "0007 cannot record (they would act again)")
    with op.batch_alter_table('actors', schema=None) as batch_op:
        batch_op.drop_column('disabled_at')
