"""The DDL of a store as safeship wrote it before schema revisions were kept (no alembic_version
table): what `metadata.create_all` made, per dialect, plus the SQLite audit triggers. Frozen here
so that the upgrade tests build a truly old database, not one made by today's code."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine

SQLITE = (
    'CREATE TABLE api_tokens ( id VARCHAR(64) NOT NULL, name VARCHAR(200) NOT NULL, token_sha256 VARCHAR(64) NOT NULL, role VARCHAR(32) NOT NULL, environments JSON, created_at FLOAT NOT NULL, last_used_at FLOAT, revoked_at FLOAT, PRIMARY KEY (id), UNIQUE (name), UNIQUE (token_sha256) )',  # noqa: E501
    'CREATE TABLE artifacts ( service VARCHAR(200) NOT NULL, version VARCHAR(200) NOT NULL, path TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL, run_id VARCHAR(64) NOT NULL, registered_at FLOAT NOT NULL, PRIMARY KEY (service, version) )',  # noqa: E501
    'CREATE TABLE audit ( id INTEGER NOT NULL, at FLOAT NOT NULL, actor VARCHAR(200) NOT NULL, role VARCHAR(32), action VARCHAR(300) NOT NULL, target VARCHAR(300) NOT NULL, source VARCHAR(200) NOT NULL, status INTEGER NOT NULL, outcome TEXT NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_audit_at ON audit (at)',
    'CREATE TABLE cursors ( name VARCHAR(200) NOT NULL, position INTEGER NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (name) )',  # noqa: E501
    'CREATE TABLE deployments ( id VARCHAR(64) NOT NULL, service VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, version VARCHAR(200) NOT NULL, from_version VARCHAR(200), strategy VARCHAR(32) NOT NULL, strategy_reason TEXT NOT NULL, policy VARCHAR(32) NOT NULL, phase VARCHAR(32) NOT NULL, step_index INTEGER NOT NULL, "plan" JSON NOT NULL, status JSON NOT NULL, request JSON NOT NULL, decision VARCHAR(32), reason TEXT, evidence JSON, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, phase_started_at FLOAT NOT NULL, step_started_at FLOAT NOT NULL, decided_at FLOAT, finished_at FLOAT, row_version INTEGER NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_deployments_environment ON deployments (environment)',
    'CREATE INDEX ix_deployments_phase ON deployments (phase)',
    'CREATE INDEX ix_deployments_service ON deployments (service)',
    'CREATE TABLE environment_state ( name VARCHAR(200) NOT NULL, prepared_at FLOAT NOT NULL, state JSON NOT NULL, PRIMARY KEY (name) )',  # noqa: E501
    'CREATE TABLE events ( id INTEGER NOT NULL, deployment_id VARCHAR(64) NOT NULL, at FLOAT NOT NULL, kind VARCHAR(64) NOT NULL, message TEXT NOT NULL, data JSON, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_events_deployment_id ON events (deployment_id)',
    'CREATE TABLE instances ( id VARCHAR(300) NOT NULL, service VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, record JSON NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_instances_service ON instances (service)',
    'CREATE TABLE pipeline_runs ( id VARCHAR(64) NOT NULL, service VARCHAR(200) NOT NULL, version VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, status VARCHAR(32) NOT NULL, started_at FLOAT NOT NULL, finished_at FLOAT, stages JSON NOT NULL, artifact_path TEXT, artifact_sha256 VARCHAR(64), deployment_id VARCHAR(64), message TEXT, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_pipeline_runs_service ON pipeline_runs (service)',
    'CREATE TABLE rollbacks ( id VARCHAR(64) NOT NULL, deployment_id VARCHAR(64) NOT NULL, service VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, from_version VARCHAR(200) NOT NULL, to_version VARCHAR(200), reason TEXT NOT NULL, evidence JSON, automatic BOOLEAN NOT NULL, started_at FLOAT NOT NULL, duration_s FLOAT, success BOOLEAN, timestamp FLOAT NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_rollbacks_deployment_id ON rollbacks (deployment_id)',
    'CREATE INDEX ix_rollbacks_service ON rollbacks (service)',
    'CREATE TABLE service_settings ( service VARCHAR(200) NOT NULL, "rollback" JSON, updated_at FLOAT NOT NULL, PRIMARY KEY (service) )',  # noqa: E501
    'CREATE TABLE stable_versions ( id INTEGER NOT NULL, service VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, version VARCHAR(200) NOT NULL, deployment_id VARCHAR(64), promoted_at FLOAT NOT NULL, retired_at FLOAT, healthy BOOLEAN NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_stable_versions_service ON stable_versions (service)',
)
POSTGRESQL = (
    'CREATE TABLE api_tokens ( id VARCHAR(64) NOT NULL, name VARCHAR(200) NOT NULL, token_sha256 VARCHAR(64) NOT NULL, role VARCHAR(32) NOT NULL, environments JSON, created_at FLOAT NOT NULL, last_used_at FLOAT, revoked_at FLOAT, PRIMARY KEY (id), UNIQUE (name), UNIQUE (token_sha256) )',  # noqa: E501
    'CREATE TABLE artifacts ( service VARCHAR(200) NOT NULL, version VARCHAR(200) NOT NULL, path TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL, run_id VARCHAR(64) NOT NULL, registered_at FLOAT NOT NULL, PRIMARY KEY (service, version) )',  # noqa: E501
    'CREATE TABLE audit ( id SERIAL NOT NULL, at FLOAT NOT NULL, actor VARCHAR(200) NOT NULL, role VARCHAR(32), action VARCHAR(300) NOT NULL, target VARCHAR(300) NOT NULL, source VARCHAR(200) NOT NULL, status INTEGER NOT NULL, outcome TEXT NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_audit_at ON audit (at)',
    'CREATE TABLE cursors ( name VARCHAR(200) NOT NULL, position INTEGER NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (name) )',  # noqa: E501
    'CREATE TABLE deployments ( id VARCHAR(64) NOT NULL, service VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, version VARCHAR(200) NOT NULL, from_version VARCHAR(200), strategy VARCHAR(32) NOT NULL, strategy_reason TEXT NOT NULL, policy VARCHAR(32) NOT NULL, phase VARCHAR(32) NOT NULL, step_index INTEGER NOT NULL, plan JSON NOT NULL, status JSON NOT NULL, request JSON NOT NULL, decision VARCHAR(32), reason TEXT, evidence JSON, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, phase_started_at FLOAT NOT NULL, step_started_at FLOAT NOT NULL, decided_at FLOAT, finished_at FLOAT, row_version INTEGER NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_deployments_environment ON deployments (environment)',
    'CREATE INDEX ix_deployments_phase ON deployments (phase)',
    'CREATE INDEX ix_deployments_service ON deployments (service)',
    'CREATE TABLE environment_state ( name VARCHAR(200) NOT NULL, prepared_at FLOAT NOT NULL, state JSON NOT NULL, PRIMARY KEY (name) )',  # noqa: E501
    'CREATE TABLE events ( id SERIAL NOT NULL, deployment_id VARCHAR(64) NOT NULL, at FLOAT NOT NULL, kind VARCHAR(64) NOT NULL, message TEXT NOT NULL, data JSON, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_events_deployment_id ON events (deployment_id)',
    'CREATE TABLE instances ( id VARCHAR(300) NOT NULL, service VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, record JSON NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_instances_service ON instances (service)',
    'CREATE TABLE pipeline_runs ( id VARCHAR(64) NOT NULL, service VARCHAR(200) NOT NULL, version VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, status VARCHAR(32) NOT NULL, started_at FLOAT NOT NULL, finished_at FLOAT, stages JSON NOT NULL, artifact_path TEXT, artifact_sha256 VARCHAR(64), deployment_id VARCHAR(64), message TEXT, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_pipeline_runs_service ON pipeline_runs (service)',
    'CREATE TABLE rollbacks ( id VARCHAR(64) NOT NULL, deployment_id VARCHAR(64) NOT NULL, service VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, from_version VARCHAR(200) NOT NULL, to_version VARCHAR(200), reason TEXT NOT NULL, evidence JSON, automatic BOOLEAN NOT NULL, started_at FLOAT NOT NULL, duration_s FLOAT, success BOOLEAN, timestamp FLOAT NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_rollbacks_deployment_id ON rollbacks (deployment_id)',
    'CREATE INDEX ix_rollbacks_service ON rollbacks (service)',
    'CREATE TABLE service_settings ( service VARCHAR(200) NOT NULL, rollback JSON, updated_at FLOAT NOT NULL, PRIMARY KEY (service) )',  # noqa: E501
    'CREATE TABLE stable_versions ( id SERIAL NOT NULL, service VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL, version VARCHAR(200) NOT NULL, deployment_id VARCHAR(64), promoted_at FLOAT NOT NULL, retired_at FLOAT, healthy BOOLEAN NOT NULL, PRIMARY KEY (id) )',  # noqa: E501
    'CREATE INDEX ix_stable_versions_service ON stable_versions (service)',
)

SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: rows cannot be changed'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: rows cannot be deleted'); END",
)


def create(engine: Engine, *, without: Iterable[str] = ()) -> None:
    """Make the old schema on an empty database, leaving out the tables named in `without` (a
    SQLite file in WAL mode, as the store always left it)."""
    skipped = set(without)
    sqlite = engine.dialect.name == "sqlite"
    statements = SQLITE if sqlite else POSTGRESQL
    if sqlite:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    with engine.begin() as conn:
        for statement in statements:
            words = statement.split()
            table = words[2] if words[1] == "TABLE" else words[words.index("ON") + 1]
            if table not in skipped:
                conn.exec_driver_sql(statement)
        if sqlite and "audit" not in skipped:
            for statement in SQLITE_TRIGGERS:
                conn.exec_driver_sql(statement)
