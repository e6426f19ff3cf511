"""SQLite: `INSERT OR REPLACE` may not rewrite an audit row or the chain head

SQLite's REPLACE conflict resolution deletes the conflicting row without firing DELETE
triggers, so the append-only triggers of 0001 did not stop `INSERT OR REPLACE INTO audit_events`
(rewriting an event) or `INTO audit_head` (moving the head back). An insert that would replace
an existing row is now refused. PostgreSQL has no REPLACE: `ON CONFLICT DO UPDATE` fires the
UPDATE triggers of 0001.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

from alembic import op

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

SQLITE_TRIGGERS = {
    "audit_events_no_replace": "BEFORE INSERT ON audit_events "
    "WHEN EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq) BEGIN "
    "SELECT RAISE(ABORT, 'audit_events is append-only: replacing an event refused'); END",
    "audit_head_no_replace": "BEFORE INSERT ON audit_head "
    "WHEN EXISTS (SELECT 1 FROM audit_head WHERE id = NEW.id) BEGIN "
    "SELECT RAISE(ABORT, 'audit_head only moves forward: replacing it refused'); END",
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
