"""Recorded deployment evaluations and promotions (issue 16): `production` moves only through a
promotion that names a passing verification and a recorded evaluation

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'deployment_evaluations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('deployment_id', sa.Integer(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('metrics_sha256', sa.String(64), nullable=False),
        sa.Column('report_sha256', sa.String(64), nullable=True),
        sa.Column('mlflow_run_id', sa.String(64), nullable=True),
        sa.Column('created_by_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'],
                                name=op.f('fk_deployment_evaluations_deployment_id_deployments')),
        sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'],
                                name=op.f('fk_deployment_evaluations_created_by_id_actors')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_deployment_evaluations')),
    )
    op.create_index(op.f('ix_deployment_evaluations_deployment_id'), 'deployment_evaluations', ['deployment_id'])
    op.create_table(
        'deployment_promotions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('deployment_id', sa.Integer(), nullable=False),
        sa.Column('evaluation_id', sa.Integer(), nullable=False),
        sa.Column('alias', sa.String(64), nullable=False),
        sa.Column('mlflow_model', sa.String(255), nullable=True),
        sa.Column('mlflow_version', sa.String(64), nullable=True),
        sa.Column('promoted_by_id', sa.Integer(), nullable=False),
        sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'],
                                name=op.f('fk_deployment_promotions_deployment_id_deployments')),
        sa.ForeignKeyConstraint(['evaluation_id'], ['deployment_evaluations.id'],
                                name=op.f('fk_deployment_promotions_evaluation_id_deployment_evaluations')),
        sa.ForeignKeyConstraint(['promoted_by_id'], ['actors.id'],
                                name=op.f('fk_deployment_promotions_promoted_by_id_actors')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_deployment_promotions')),
    )


def downgrade() -> None:
    bind = op.get_bind()
    counts = {t: bind.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
              for t in ('deployment_evaluations', 'deployment_promotions')}
    if any(counts.values()):
        raise RuntimeError(f"cannot downgrade below 0010: {counts['deployment_evaluations']} recorded evaluations and "
                           f"{counts['deployment_promotions']} promotions would be lost (the audit log names them)")
    op.drop_table('deployment_promotions')
    op.drop_index(op.f('ix_deployment_evaluations_deployment_id'), table_name='deployment_evaluations')
    op.drop_table('deployment_evaluations')
