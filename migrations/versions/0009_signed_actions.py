"""Signed actions (issue 15): each audit event can carry its actor's Ed25519 signature; the
approval policy can require signed actions

Columns are added with plain ALTER TABLE (no table rebuild): rebuilding audit_events on SQLite
would drop its append-only triggers.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('audit_events', sa.Column('signer_key', sa.String(64), nullable=True))
    op.add_column('audit_events', sa.Column('signature', sa.String(128), nullable=True))
    op.add_column('approval_policies', sa.Column('require_signatures', sa.Boolean(), nullable=False,
                                                 server_default=sa.false()))


def downgrade() -> None:
    bind = op.get_bind()
    signed = bind.execute(sa.text("SELECT count(*) FROM audit_events WHERE signature IS NOT NULL")).scalar()
    if signed:
        raise RuntimeError(f"cannot downgrade below 0009: {signed} audit events are signed, and revision 0008 "
                           "cannot keep their signatures")
    required = bind.execute(sa.text("SELECT count(*) FROM approval_policies WHERE require_signatures")).scalar()
    if required:
        raise RuntimeError("cannot downgrade below 0009: an approval policy requires signed actions")
    # SQLite >= 3.35 drops a column in place, keeping the table's triggers.
    for table, column in (('audit_events', 'signature'), ('audit_events', 'signer_key'),
                          ('approval_policies', 'require_signatures')):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
