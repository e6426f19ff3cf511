"""several SAEs per blocklist version, one per hook point

A published blocklist version names its SAEs in `blocklist_version_saes` (one row per hook
point) instead of one `sae_id`; deployments find theirs through their blocklist version.
Existing rows migrate in place: each version's one SAE becomes its one hook point. The audit
log is not touched, so its chain verifies as before. Downgrade refuses while any version holds
more than one SAE (it would lose them).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('blocklist_version_saes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('blocklist_version_id', sa.Integer(), nullable=False),
    sa.Column('hook_point', sa.String(length=256), nullable=False),
    sa.Column('sae_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['blocklist_version_id'], ['blocklist_versions.id'], name=op.f('fk_blocklist_version_saes_blocklist_version_id_blocklist_versions')),
    sa.ForeignKeyConstraint(['sae_id'], ['sae_versions.id'], name=op.f('fk_blocklist_version_saes_sae_id_sae_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocklist_version_saes')),
    sa.UniqueConstraint('blocklist_version_id', 'hook_point', name=op.f('uq_blocklist_version_saes_blocklist_version_id_hook_point'))
    )
    with op.batch_alter_table('blocklist_version_saes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blocklist_version_saes_blocklist_version_id'), ['blocklist_version_id'], unique=False)
    op.execute(
        "INSERT INTO blocklist_version_saes (blocklist_version_id, hook_point, sae_id) "
        "SELECT v.id, s.hook_point, v.sae_id FROM blocklist_versions v JOIN sae_versions s ON s.id = v.sae_id "
        "ORDER BY v.id")
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_deployments_sae_id_sae_versions'), type_='foreignkey')
        batch_op.drop_column('sae_id')
    with op.batch_alter_table('blocklist_versions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_blocklist_versions_sae_id_sae_versions'), type_='foreignkey')
        batch_op.drop_column('sae_id')


def downgrade() -> None:
    conn = op.get_bind()
    several = conn.execute(sa.text(
        "SELECT blocklist_version_id FROM blocklist_version_saes GROUP BY blocklist_version_id "
        "HAVING COUNT(*) > 1 ORDER BY blocklist_version_id")).scalars().all()
    if several:
        raise RuntimeError(
            f"cannot downgrade below 0002: blocklist versions {', '.join(map(str, several))} hold SAEs at "
            "several hook points, which revision 0001 cannot record (they would be lost)")
    with op.batch_alter_table('blocklist_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sae_id', sa.Integer(), nullable=True))
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sae_id', sa.Integer(), nullable=True))
    op.execute("UPDATE blocklist_versions SET sae_id = (SELECT s.sae_id FROM blocklist_version_saes s "
               "WHERE s.blocklist_version_id = blocklist_versions.id)")
    op.execute("UPDATE deployments SET sae_id = (SELECT v.sae_id FROM blocklist_versions v "
               "WHERE v.id = deployments.blocklist_version_id)")
    with op.batch_alter_table('blocklist_versions', schema=None) as batch_op:
        batch_op.alter_column('sae_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(batch_op.f('fk_blocklist_versions_sae_id_sae_versions'), 'sae_versions', ['sae_id'], ['id'])
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.alter_column('sae_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(batch_op.f('fk_deployments_sae_id_sae_versions'), 'sae_versions', ['sae_id'], ['id'])
    with op.batch_alter_table('blocklist_version_saes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blocklist_version_saes_blocklist_version_id'))
    op.drop_table('blocklist_version_saes')
