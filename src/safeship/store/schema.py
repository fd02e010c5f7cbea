"""Tables. Times are float seconds from the engine's clock (wall time, or virtual in the sim)."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

deployments = Table(
    "deployments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("service", String(200), nullable=False, index=True),
    Column("environment", String(200), nullable=False, index=True),
    Column("version", String(200), nullable=False),
    Column("from_version", String(200)),
    Column("strategy", String(32), nullable=False),
    Column("strategy_reason", Text, nullable=False, default=""),
    Column("policy", String(32), nullable=False, default="safeship"),
    Column("phase", String(32), nullable=False, index=True),
    Column("step_index", Integer, nullable=False, default=0),
    Column("plan", JSON, nullable=False),
    Column("status", JSON, nullable=False),  # analysis state, counter snapshots, rollback bookkeeping
    Column("request", JSON, nullable=False),
    Column("decision", String(32)),
    Column("reason", Text),
    Column("evidence", JSON),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("phase_started_at", Float, nullable=False),
    Column("step_started_at", Float, nullable=False),
    Column("decided_at", Float),
    Column("finished_at", Float),
    Column("row_version", Integer, nullable=False, default=1),
    # The fencing token of the lease under which the row was last written (see `leases`); null when
    # no lease was held (a foreground command, a simulation, a database older than leases).
    Column("fencing_token", Integer),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment_id", String(64), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON),
    Column("fencing_token", Integer),  # the writer's fencing token, as in deployments
)

rollbacks = Table(
    "rollbacks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("deployment_id", String(64), nullable=False, index=True),
    Column("service", String(200), nullable=False, index=True),
    Column("environment", String(200), nullable=False),
    Column("from_version", String(200), nullable=False),
    Column("to_version", String(200)),
    Column("reason", Text, nullable=False),
    Column("evidence", JSON),
    Column("automatic", Boolean, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_s", Float),
    Column("success", Boolean),
    Column("timestamp", Float, nullable=False),
)

stable_versions = Table(
    "stable_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(200), nullable=False, index=True),
    Column("environment", String(200), nullable=False),
    Column("version", String(200), nullable=False),
    Column("deployment_id", String(64)),
    Column("promoted_at", Float, nullable=False),  # healthy and serving all traffic since
    Column("retired_at", Float),  # replaced or rolled back
    Column("healthy", Boolean, nullable=False, default=True),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("service", String(200), nullable=False, index=True),
    Column("environment", String(200), nullable=False),
    Column("record", JSON, nullable=False),
)

service_settings = Table(
    "service_settings",
    metadata,
    Column("service", String(200), primary_key=True),
    Column("rollback", JSON),  # rollback-manager --configure
    Column("updated_at", Float, nullable=False),
)

environment_state = Table(
    "environment_state",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("prepared_at", Float, nullable=False),
    Column("state", JSON, nullable=False),  # directories, reserved ports, config maps, secret names
)

cursors = Table(
    "cursors",
    metadata,
    Column("name", String(200), primary_key=True),  # one consumer of the events table
    Column("position", Integer, nullable=False),  # the id of the last event it is done with
    Column("updated_at", Float, nullable=False),
)

# The row a consumer without a cursor of its own starts from: the last event id when the cursors
# table was added to a database that already held events (those were handled before cursors
# existed). Absent in a database that had cursors from the start; such consumers start at 0.
CURSOR_START = "*start*"

artifacts = Table(
    "artifacts",
    metadata,
    Column("service", String(200), primary_key=True),
    Column("version", String(200), primary_key=True),
    Column("path", Text, nullable=False),  # absolute path of the file the pipeline built
    Column("sha256", String(64), nullable=False),
    Column("run_id", String(64), nullable=False),  # the pipeline run that built and tested it
    Column("registered_at", Float, nullable=False),
)

pipeline_runs = Table(
    "pipeline_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("service", String(200), nullable=False, index=True),
    Column("version", String(200), nullable=False),
    Column("environment", String(200), nullable=False),
    Column("status", String(32), nullable=False),  # running, failed, deploying, then the deployment's phase
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("stages", JSON, nullable=False),  # [{name, status, started_at, duration_s, exit_code, log_path, detail}]
    Column("artifact_path", Text),
    Column("artifact_sha256", String(64)),
    Column("deployment_id", String(64)),
    Column("message", Text),  # why it stopped, or the deployment's outcome
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(64), primary_key=True),  # tok-0123456789: names the token in sessions and rows
    Column("name", String(200), nullable=False, unique=True),
    Column("token_sha256", String(64), nullable=False, unique=True),  # the token itself is never stored
    Column("role", String(32), nullable=False),  # viewer, deployer or admin
    Column("environments", JSON),  # the environments it is limited to; null: all of them
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
)

# Append-only: rows are inserted, never changed or removed. The triggers in AUDIT_TRIGGERS (SQLite)
# and AUDIT_TRIGGERS_POSTGRESQL refuse an UPDATE, DELETE or TRUNCATE of the table whoever sends it.
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),  # wall time (UTC seconds)
    Column("actor", String(200), nullable=False),  # token name, "local admin", "dashboard: <name>", "cli: <user>"
    Column("role", String(32)),  # the actor's role; null when no token was recognised
    Column("action", String(300), nullable=False),  # "POST /deployments", "safeship token create"
    Column("target", String(300), nullable=False, default=""),  # service/environment, deployment id, token name
    Column("source", String(200), nullable=False, default=""),  # client address, or "cli" with a PID
    Column("status", Integer, nullable=False),  # HTTP status, or the command's exit code
    Column("outcome", Text, nullable=False, default=""),  # "ok", or the refusal's one sentence
)

# One lease per deployment (name = the deployment's id): the controller that holds it is the only
# one that drives the deployment. `token` grows by one each time the lease changes hands and never
# goes down (a released lease keeps its row and token); every write a holder makes for the
# deployment checks, in its own transaction, that its token is still the current one.
leases = Table(
    "leases",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(300), nullable=False, default=""),  # "" when released
    Column("token", Integer, nullable=False),
    Column("acquired_at", Float, nullable=False),  # wall time (UTC seconds) the holder took it
    Column("renewed_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # another controller may take it from then on
)

AUDIT_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: rows cannot be changed'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: rows cannot be deleted'); END",
)

AUDIT_TRIGGERS_POSTGRESQL = (
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


def audit_triggers(dialect: str) -> tuple[str, ...]:
    """The statements that make the audit table append-only on `dialect` (none for others)."""
    if dialect == "sqlite":
        return AUDIT_TRIGGERS
    if dialect == "postgresql":
        return AUDIT_TRIGGERS_POSTGRESQL
    return ()
