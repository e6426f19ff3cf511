"""feature_mappings.selection_rule may be 'specific' (specificity-aware selection, issue 14)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NAME = 'ck_feature_mappings_selection_rule'


def _replace_check(rules: tuple[str, ...]) -> None:
    with op.batch_alter_table('feature_mappings', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(NAME), type_='check')
        batch_op.create_check_constraint(batch_op.f(NAME), f"selection_rule IN ({', '.join(repr(r) for r in rules)})")


def upgrade() -> None:
    _replace_check(("tau", "top_n", "specific"))


def downgrade() -> None:
    ids = op.get_bind().execute(sa.text(
        "SELECT id FROM feature_mappings WHERE selection_rule = 'specific' ORDER BY id")).scalars().all()
    if ids:
        raise RuntimeError(f"cannot downgrade below 0004: mappings {', '.join(map(str, ids))} use the 'specific' "
                           "selection rule, which revision 0003 cannot record")
    _replace_check(("tau", "top_n"))
