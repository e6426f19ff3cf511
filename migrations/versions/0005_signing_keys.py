"""signing_keys: the deployment-signing public keys an admin registered (issue 15)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'signing_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('public_key', sa.String(length=64), nullable=False),
        sa.Column('purpose', sa.String(length=16), nullable=False),
        sa.Column('actor_id', sa.Integer(), nullable=False),
        sa.Column('registered_by_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_by_id', sa.Integer(), nullable=True),
        sa.CheckConstraint("purpose IN ('deployment')", name=op.f('ck_signing_keys_purpose')),
        sa.ForeignKeyConstraint(['actor_id'], ['actors.id'], name=op.f('fk_signing_keys_actor_id_actors')),
        sa.ForeignKeyConstraint(['registered_by_id'], ['actors.id'],
                                name=op.f('fk_signing_keys_registered_by_id_actors')),
        sa.ForeignKeyConstraint(['revoked_by_id'], ['actors.id'], name=op.f('fk_signing_keys_revoked_by_id_actors')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_keys')),
        sa.UniqueConstraint('public_key', name=op.f('uq_signing_keys_public_key')),
    )
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signing_keys_actor_id'), ['actor_id'], unique=False)


def downgrade() -> None:
    n = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM signing_keys")).scalar()
    if n:
        raise RuntimeError(f"cannot downgrade below 0005: {n} registered signing keys would be lost")
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signing_keys_actor_id'))
    op.drop_table('signing_keys')
