"""The schema as it stood before revisions were kept: every table up to the audit table.

A database written by a safeship of that time has some or all of these tables and no
alembic_version table; this revision then creates only what is missing (the tables a store of
that age did not have yet), so it both creates a new store and adopts an old one in place. When
it adds the cursors table to a database that already holds events, those events were notified
before cursors existed: a start row records the last of them, so that no consumer handles them
again.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CURSOR_START = "*start*"


def _tables() -> list[tuple[str, list[sa.Column[object]], list[tuple[str, list[str]]]]]:
    """(table, columns, indexes) as they stood at this revision; never edit: add a revision."""
    string, text, integer, number, boolean, json = sa.String, sa.Text, sa.Integer, sa.Float, sa.Boolean, sa.JSON
    return [
        ("deployments", [
            sa.Column("id", string(64), primary_key=True),
            sa.Column("service", string(200), nullable=False),
            sa.Column("environment", string(200), nullable=False),
            sa.Column("version", string(200), nullable=False),
            sa.Column("from_version", string(200)),
            sa.Column("strategy", string(32), nullable=False),
            sa.Column("strategy_reason", text(), nullable=False),
            sa.Column("policy", string(32), nullable=False),
            sa.Column("phase", string(32), nullable=False),
            sa.Column("step_index", integer(), nullable=False),
            sa.Column("plan", json(), nullable=False),
            sa.Column("status", json(), nullable=False),
            sa.Column("request", json(), nullable=False),
            sa.Column("decision", string(32)),
            sa.Column("reason", text()),
            sa.Column("evidence", json()),
            sa.Column("created_at", number(), nullable=False),
            sa.Column("updated_at", number(), nullable=False),
            sa.Column("phase_started_at", number(), nullable=False),
            sa.Column("step_started_at", number(), nullable=False),
            sa.Column("decided_at", number()),
            sa.Column("finished_at", number()),
            sa.Column("row_version", integer(), nullable=False),
        ], [("ix_deployments_environment", ["environment"]), ("ix_deployments_phase", ["phase"]),
            ("ix_deployments_service", ["service"])]),
        ("events", [
            sa.Column("id", integer(), primary_key=True, autoincrement=True),
            sa.Column("deployment_id", string(64), nullable=False),
            sa.Column("at", number(), nullable=False),
            sa.Column("kind", string(64), nullable=False),
            sa.Column("message", text(), nullable=False),
            sa.Column("data", json()),
        ], [("ix_events_deployment_id", ["deployment_id"])]),
        ("rollbacks", [
            sa.Column("id", string(64), primary_key=True),
            sa.Column("deployment_id", string(64), nullable=False),
            sa.Column("service", string(200), nullable=False),
            sa.Column("environment", string(200), nullable=False),
            sa.Column("from_version", string(200), nullable=False),
            sa.Column("to_version", string(200)),
            sa.Column("reason", text(), nullable=False),
            sa.Column("evidence", json()),
            sa.Column("automatic", boolean(), nullable=False),
            sa.Column("started_at", number(), nullable=False),
            sa.Column("duration_s", number()),
            sa.Column("success", boolean()),
            sa.Column("timestamp", number(), nullable=False),
        ], [("ix_rollbacks_deployment_id", ["deployment_id"]), ("ix_rollbacks_service", ["service"])]),
        ("stable_versions", [
            sa.Column("id", integer(), primary_key=True, autoincrement=True),
            sa.Column("service", string(200), nullable=False),
            sa.Column("environment", string(200), nullable=False),
            sa.Column("version", string(200), nullable=False),
            sa.Column("deployment_id", string(64)),
            sa.Column("promoted_at", number(), nullable=False),
            sa.Column("retired_at", number()),
            sa.Column("healthy", boolean(), nullable=False),
        ], [("ix_stable_versions_service", ["service"])]),
        ("instances", [
            sa.Column("id", string(300), primary_key=True),
            sa.Column("service", string(200), nullable=False),
            sa.Column("environment", string(200), nullable=False),
            sa.Column("record", json(), nullable=False),
        ], [("ix_instances_service", ["service"])]),
        ("service_settings", [
            sa.Column("service", string(200), primary_key=True),
            sa.Column("rollback", json()),
            sa.Column("updated_at", number(), nullable=False),
        ], []),
        ("environment_state", [
            sa.Column("name", string(200), primary_key=True),
            sa.Column("prepared_at", number(), nullable=False),
            sa.Column("state", json(), nullable=False),
        ], []),
        ("cursors", [
            sa.Column("name", string(200), primary_key=True),
            sa.Column("position", integer(), nullable=False),
            sa.Column("updated_at", number(), nullable=False),
        ], []),
        ("artifacts", [
            sa.Column("service", string(200), primary_key=True),
            sa.Column("version", string(200), primary_key=True),
            sa.Column("path", text(), nullable=False),
            sa.Column("sha256", string(64), nullable=False),
            sa.Column("run_id", string(64), nullable=False),
            sa.Column("registered_at", number(), nullable=False),
        ], []),
        ("pipeline_runs", [
            sa.Column("id", string(64), primary_key=True),
            sa.Column("service", string(200), nullable=False),
            sa.Column("version", string(200), nullable=False),
            sa.Column("environment", string(200), nullable=False),
            sa.Column("status", string(32), nullable=False),
            sa.Column("started_at", number(), nullable=False),
            sa.Column("finished_at", number()),
            sa.Column("stages", json(), nullable=False),
            sa.Column("artifact_path", text()),
            sa.Column("artifact_sha256", string(64)),
            sa.Column("deployment_id", string(64)),
            sa.Column("message", text()),
        ], [("ix_pipeline_runs_service", ["service"])]),
        ("api_tokens", [
            sa.Column("id", string(64), primary_key=True),
            sa.Column("name", string(200), nullable=False, unique=True),
            sa.Column("token_sha256", string(64), nullable=False, unique=True),
            sa.Column("role", string(32), nullable=False),
            sa.Column("environments", json()),
            sa.Column("created_at", number(), nullable=False),
            sa.Column("last_used_at", number()),
            sa.Column("revoked_at", number()),
        ], []),
        ("audit", [
            sa.Column("id", integer(), primary_key=True, autoincrement=True),
            sa.Column("at", number(), nullable=False),
            sa.Column("actor", string(200), nullable=False),
            sa.Column("role", string(32)),
            sa.Column("action", string(300), nullable=False),
            sa.Column("target", string(300), nullable=False),
            sa.Column("source", string(200), nullable=False),
            sa.Column("status", integer(), nullable=False),
            sa.Column("outcome", text(), nullable=False),
        ], [("ix_audit_at", ["at"])]),
    ]


AUDIT_SQLITE = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: rows cannot be changed'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: rows cannot be deleted'); END",
)

AUDIT_POSTGRESQL = (
    "CREATE OR REPLACE FUNCTION safeship_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'the audit table is append-only: rows cannot be %', "
    "CASE TG_OP WHEN 'UPDATE' THEN 'changed' ELSE 'deleted' END; END $$",
    "DROP TRIGGER IF EXISTS audit_no_update ON audit",
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit FOR EACH ROW EXECUTE FUNCTION safeship_audit_append_only()",
    "DROP TRIGGER IF EXISTS audit_no_delete ON audit",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit FOR EACH ROW EXECUTE FUNCTION safeship_audit_append_only()",
    "DROP TRIGGER IF EXISTS audit_no_truncate ON audit",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION safeship_audit_append_only()",
)


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    for name, columns, indexes in _tables():
        if name in present:
            continue
        op.create_table(name, *columns)
        for index, on in indexes:
            op.create_index(index, name, on)
    dialect = bind.dialect.name
    for statement in AUDIT_SQLITE if dialect == "sqlite" else AUDIT_POSTGRESQL if dialect == "postgresql" else ():
        op.execute(statement)
    if "cursors" in present or "events" not in present:
        return
    last = bind.execute(sa.text("SELECT max(id) FROM events")).scalar()
    if last:
        cursors = sa.table("cursors", sa.column("name"), sa.column("position"), sa.column("updated_at"))
        op.execute(cursors.insert().values(name=CURSOR_START, position=int(last), updated_at=time.time()))


def downgrade() -> None:
    raise NotImplementedError("safeship does not downgrade a store; restore a copy made before the upgrade")
