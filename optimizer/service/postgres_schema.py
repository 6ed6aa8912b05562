"""The PostgreSQL queue's schema: its tables, and the migrations that bring a database to this version.

``MIGRATIONS[n]`` takes a database from version n to n+1; the version is kept in
``oci_optimizer.schema_version``. A database newer than the service knows is refused.
"""

from __future__ import annotations

from .records import V1_JOB_COLUMNS

__all__ = ["CHANNEL", "LOCK_CLASS", "MIGRATIONS", "MIGRATION_LOCK", "NOW", "SCHEMA", "SCHEMA_VERSION"]

SCHEMA = "oci_optimizer"
CHANNEL = "oci_optimizer_jobs"
LOCK_CLASS = 0x6F63  # advisory lock namespace: ("oc", hash of a name)
MIGRATION_LOCK = 1

_V1 = f"""
CREATE TABLE {SCHEMA}.jobs (
    id BIGSERIAL PRIMARY KEY,
{V1_JOB_COLUMNS.format(time="DOUBLE PRECISION")},
    lease_token TEXT,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX jobs_active_key ON {SCHEMA}.jobs (dedupe_key) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_due ON {SCHEMA}.jobs (next_attempt_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON {SCHEMA}.jobs (lease_expires_at, id) WHERE status = 'running';
CREATE INDEX jobs_key ON {SCHEMA}.jobs (dedupe_key);
CREATE INDEX jobs_status ON {SCHEMA}.jobs (status);
CREATE TABLE {SCHEMA}.events (
    event_key TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE {SCHEMA}.pushed (
    digest TEXT PRIMARY KEY,
    job_id BIGINT NOT NULL,
    reference TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE {SCHEMA}.image_layers (
    registry TEXT NOT NULL,
    layer TEXT NOT NULL,
    manifest TEXT NOT NULL,
    repository TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (registry, layer, manifest, repository)
);
CREATE TABLE {SCHEMA}.singletons (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
)
"""

MIGRATIONS = (_V1,)
SCHEMA_VERSION = len(MIGRATIONS)
NOW = "SELECT extract(epoch FROM clock_timestamp())::float8 AS now"
