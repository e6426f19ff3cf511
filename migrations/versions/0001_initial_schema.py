"""initial schema: registry tables, audit chain head, append-only triggers

Revision ID: 0001
Revises:
Create Date: 2025-11-29
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


GENESIS_HASH = "0" * 64

# Audit rows are append-only; the head only moves forward. Enforced by the database itself.
_SQLITE_TRIGGERS = {
    "audit_events_no_update": "BEFORE UPDATE ON audit_events BEGIN "
    "SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END",
    "audit_events_no_delete": "BEFORE DELETE ON audit_events BEGIN "
    "SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END",
    "audit_head_forward_only": "BEFORE UPDATE ON audit_head WHEN NEW.seq <= OLD.seq BEGIN "
    "SELECT RAISE(ABORT, 'audit_head only moves forward'); END",
    "audit_head_no_delete": "BEFORE DELETE ON audit_head BEGIN "
    "SELECT RAISE(ABORT, 'audit_head cannot be deleted'); END",
}

_PG_FUNCTIONS = """
CREATE OR REPLACE FUNCTION saegov_audit_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP;
END; $$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION saegov_audit_head_forward() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
    RAISE EXCEPTION 'audit_head cannot be deleted';
  END IF;
  IF NEW.seq <= OLD.seq THEN
    RAISE EXCEPTION 'audit_head only moves forward';
  END IF;
  RETURN NEW;
END; $$ LANGUAGE plpgsql;
"""

_PG_TRIGGERS = {
    "audit_events_no_update": "BEFORE UPDATE OR DELETE ON audit_events FOR EACH ROW "
    "EXECUTE FUNCTION saegov_audit_append_only()",
    "audit_events_no_truncate": "BEFORE TRUNCATE ON audit_events FOR EACH STATEMENT "
    "EXECUTE FUNCTION saegov_audit_append_only()",
    "audit_head_forward_only": "BEFORE UPDATE OR DELETE ON audit_head FOR EACH ROW "
    "EXECUTE FUNCTION saegov_audit_head_forward()",
    "audit_head_no_truncate": "BEFORE TRUNCATE ON audit_head FOR EACH STATEMENT "
    "EXECUTE FUNCTION saegov_audit_head_forward()",
}


def _seed_audit_head() -> None:
    op.execute(
        sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)").bindparams(
            h=GENESIS_HASH
        )
    )


def create_audit_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    elif dialect == "postgresql":
        op.execute(_PG_FUNCTIONS)
        for name, body in _PG_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    else:  # pragma: no cover
        raise NotImplementedError(dialect)


def drop_audit_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        for name in _PG_TRIGGERS:
            table = "audit_head" if name.startswith("audit_head") else "audit_events"
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS saegov_audit_append_only()")
        op.execute("DROP FUNCTION IF EXISTS saegov_audit_head_forward()")


def upgrade() -> None:
    op.create_table('actors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.CheckConstraint("role IN ('admin', 'engineer', 'reviewer', 'auditor')", name=op.f('ck_actors_role')),
    sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'], name=op.f('fk_actors_created_by_id_actors')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_actors')),
    sa.UniqueConstraint('name', name=op.f('uq_actors_name'))
    )
    op.create_table('audit_events',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_actor'), ['actor'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_subject'), ['subject'], unique=False)

    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_audit_head_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head'))
    )
    op.create_table('base_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'], name=op.f('fk_base_models_created_by_id_actors')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_models')),
    sa.UniqueConstraint('name', name=op.f('uq_base_models_name'))
    )
    op.create_table('blocklists',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'], name=op.f('fk_blocklists_created_by_id_actors')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocklists')),
    sa.UniqueConstraint('name', name=op.f('uq_blocklists_name'))
    )
    op.create_table('concepts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('prompts', sa.JSON(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('style', 'object', 'colour', 'other')", name=op.f('ck_concepts_kind')),
    sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'], name=op.f('fk_concepts_created_by_id_actors')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_concepts')),
    sa.UniqueConstraint('name', name=op.f('uq_concepts_name'))
    )
    op.create_table('sae_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('hook_point', sa.String(length=256), nullable=False),
    sa.Column('d_in', sa.Integer(), nullable=False),
    sa.Column('n_latents', sa.Integer(), nullable=False),
    sa.Column('k', sa.Integer(), nullable=False),
    sa.Column('architecture', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('weights_uri', sa.Text(), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('cfg_sha256', sa.String(length=64), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('base_model_id', sa.Integer(), nullable=True),
    sa.Column('activation_dataset_hash', sa.String(length=64), nullable=True),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('mlflow_model_version', sa.String(length=64), nullable=True),
    sa.Column('created_by_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('n_latents > 0 AND d_in > 0 AND k > 0', name=op.f('ck_sae_versions_sizes')),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], name=op.f('fk_sae_versions_base_model_id_base_models')),
    sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'], name=op.f('fk_sae_versions_created_by_id_actors')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sae_versions')),
    sa.UniqueConstraint('name', 'version', name=op.f('uq_sae_versions_name_version'))
    )
    op.create_table('feature_mappings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('concept_id', sa.Integer(), nullable=False),
    sa.Column('sae_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('selection_rule', sa.String(length=8), nullable=False),
    sa.Column('tau', sa.Float(), nullable=True),
    sa.Column('top_n', sa.Integer(), nullable=True),
    sa.Column('gamma', sa.Float(), nullable=False),
    sa.Column('scheduler', sa.String(length=128), nullable=False),
    sa.Column('num_steps', sa.Integer(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('spec_sha256', sa.String(length=64), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("selection_rule IN ('tau', 'top_n')", name=op.f('ck_feature_mappings_selection_rule')),
    sa.CheckConstraint("state IN ('draft', 'proposed', 'approved', 'rejected', 'revoked')", name=op.f('ck_feature_mappings_state')),
    sa.ForeignKeyConstraint(['concept_id'], ['concepts.id'], name=op.f('fk_feature_mappings_concept_id_concepts')),
    sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'], name=op.f('fk_feature_mappings_created_by_id_actors')),
    sa.ForeignKeyConstraint(['sae_id'], ['sae_versions.id'], name=op.f('fk_feature_mappings_sae_id_sae_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feature_mappings'))
    )
    with op.batch_alter_table('feature_mappings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feature_mappings_concept_id'), ['concept_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_feature_mappings_sae_id'), ['sae_id'], unique=False)

    op.create_table('blocklist_draft_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('blocklist_id', sa.Integer(), nullable=False),
    sa.Column('mapping_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['blocklist_id'], ['blocklists.id'], name=op.f('fk_blocklist_draft_entries_blocklist_id_blocklists')),
    sa.ForeignKeyConstraint(['mapping_id'], ['feature_mappings.id'], name=op.f('fk_blocklist_draft_entries_mapping_id_feature_mappings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocklist_draft_entries')),
    sa.UniqueConstraint('blocklist_id', 'mapping_id', name=op.f('uq_blocklist_draft_entries_blocklist_id_mapping_id'))
    )
    with op.batch_alter_table('blocklist_draft_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blocklist_draft_entries_blocklist_id'), ['blocklist_id'], unique=False)

    op.create_table('blocklist_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('blocklist_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('sae_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('published_by_id', sa.Integer(), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by_mapping_id', sa.Integer(), nullable=True),
    sa.CheckConstraint("state IN ('published', 'revoked')", name=op.f('ck_blocklist_versions_state')),
    sa.ForeignKeyConstraint(['blocklist_id'], ['blocklists.id'], name=op.f('fk_blocklist_versions_blocklist_id_blocklists')),
    sa.ForeignKeyConstraint(['published_by_id'], ['actors.id'], name=op.f('fk_blocklist_versions_published_by_id_actors')),
    sa.ForeignKeyConstraint(['revoked_by_mapping_id'], ['feature_mappings.id'], name=op.f('fk_blocklist_versions_revoked_by_mapping_id_feature_mappings')),
    sa.ForeignKeyConstraint(['sae_id'], ['sae_versions.id'], name=op.f('fk_blocklist_versions_sae_id_sae_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocklist_versions')),
    sa.UniqueConstraint('blocklist_id', 'version', name=op.f('uq_blocklist_versions_blocklist_id_version'))
    )
    with op.batch_alter_table('blocklist_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blocklist_versions_blocklist_id'), ['blocklist_id'], unique=False)

    op.create_table('mapping_features',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mapping_id', sa.Integer(), nullable=False),
    sa.Column('timestep', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('scale', sa.Float(), nullable=False),
    sa.Column('gate', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['mapping_id'], ['feature_mappings.id'], name=op.f('fk_mapping_features_mapping_id_feature_mappings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mapping_features')),
    sa.UniqueConstraint('mapping_id', 'timestep', 'feature_id', name=op.f('uq_mapping_features_mapping_id_timestep_feature_id'))
    )
    with op.batch_alter_table('mapping_features', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mapping_features_mapping_id'), ['mapping_id'], unique=False)

    op.create_table('reviews',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mapping_id', sa.Integer(), nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=False),
    sa.Column('to_state', sa.String(length=16), nullable=False),
    sa.Column('justification', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("action IN ('propose', 'approve', 'reject', 'revoke')", name=op.f('ck_reviews_action')),
    sa.ForeignKeyConstraint(['actor_id'], ['actors.id'], name=op.f('fk_reviews_actor_id_actors')),
    sa.ForeignKeyConstraint(['mapping_id'], ['feature_mappings.id'], name=op.f('fk_reviews_mapping_id_feature_mappings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reviews'))
    )
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviews_mapping_id'), ['mapping_id'], unique=False)

    op.create_table('blocklist_version_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('blocklist_version_id', sa.Integer(), nullable=False),
    sa.Column('mapping_id', sa.Integer(), nullable=False),
    sa.Column('approval_review_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['approval_review_id'], ['reviews.id'], name=op.f('fk_blocklist_version_entries_approval_review_id_reviews')),
    sa.ForeignKeyConstraint(['blocklist_version_id'], ['blocklist_versions.id'], name=op.f('fk_blocklist_version_entries_blocklist_version_id_blocklist_versions')),
    sa.ForeignKeyConstraint(['mapping_id'], ['feature_mappings.id'], name=op.f('fk_blocklist_version_entries_mapping_id_feature_mappings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocklist_version_entries')),
    sa.UniqueConstraint('blocklist_version_id', 'mapping_id', name=op.f('uq_blocklist_version_entries_blocklist_version_id_mapping_id'))
    )
    with op.batch_alter_table('blocklist_version_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blocklist_version_entries_blocklist_version_id'), ['blocklist_version_id'], unique=False)

    op.create_table('deployments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('blocklist_version_id', sa.Integer(), nullable=False),
    sa.Column('sae_id', sa.Integer(), nullable=False),
    sa.Column('base_model_hash', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('mlflow_model_version', sa.String(length=64), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('built_by_id', sa.Integer(), nullable=False),
    sa.Column('built_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['blocklist_version_id'], ['blocklist_versions.id'], name=op.f('fk_deployments_blocklist_version_id_blocklist_versions')),
    sa.ForeignKeyConstraint(['built_by_id'], ['actors.id'], name=op.f('fk_deployments_built_by_id_actors')),
    sa.ForeignKeyConstraint(['sae_id'], ['sae_versions.id'], name=op.f('fk_deployments_sae_id_sae_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployments'))
    )
    op.create_table('generations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('prompt_sha256', sa.String(length=64), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('trace', sa.Text(), nullable=False),
    sa.Column('trace_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['actors.id'], name=op.f('fk_generations_created_by_id_actors')),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_generations_deployment_id_deployments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generations'))
    )
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_generations_deployment_id'), ['deployment_id'], unique=False)


    _seed_audit_head()
    create_audit_triggers()


def downgrade() -> None:
    drop_audit_triggers()
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generations_deployment_id'))

    op.drop_table('generations')
    op.drop_table('deployments')
    with op.batch_alter_table('blocklist_version_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blocklist_version_entries_blocklist_version_id'))

    op.drop_table('blocklist_version_entries')
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reviews_mapping_id'))

    op.drop_table('reviews')
    with op.batch_alter_table('mapping_features', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mapping_features_mapping_id'))

    op.drop_table('mapping_features')
    with op.batch_alter_table('blocklist_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blocklist_versions_blocklist_id'))

    op.drop_table('blocklist_versions')
    with op.batch_alter_table('blocklist_draft_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blocklist_draft_entries_blocklist_id'))

    op.drop_table('blocklist_draft_entries')
    with op.batch_alter_table('feature_mappings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feature_mappings_sae_id'))
        batch_op.drop_index(batch_op.f('ix_feature_mappings_concept_id'))

    op.drop_table('feature_mappings')
    op.drop_table('sae_versions')
    op.drop_table('concepts')
    op.drop_table('blocklists')
    op.drop_table('base_models')
    op.drop_table('audit_head')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_subject'))
        batch_op.drop_index(batch_op.f('ix_audit_events_actor'))
        batch_op.drop_index(batch_op.f('ix_audit_events_action'))

    op.drop_table('audit_events')
    op.drop_table('actors')
