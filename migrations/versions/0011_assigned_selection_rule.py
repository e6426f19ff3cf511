"""feature_mappings.selection_rule may be 'assigned' (a concept-supervised SAE's dedicated
latents, issue 14)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NAME = 'ck_feature_mappings_selection_rule'


def _replace_check(rules: tuple[str, ...]) -> None:
    with op.batch_alter_table('feature_mappings', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(NAME), type_='check')
        batch_op.create_check_constraint(batch_op.f(NAME), f"selection_rule IN ({', '.join(repr(r) for r in rules)})")


def upgrade() -> None:
    _replace_check(("tau", "top_n", "specific", "assigned"))


def downgrade() -> None:
    ids = op.get_bind().execute(sa.text(
        "SELECT id FROM feature_mappings WHERE selection_rule = 'assigned' ORDER BY id")).scalars().all()
    if ids:
        raise RuntimeError(f"cannot downgrade below 0011: mappings {', '.join(map(str, ids))} use the 'assigned' "
                           "selection rule, which revision 0010 cannot record")
    _replace_check(("tau", "top_n", "specific"))
