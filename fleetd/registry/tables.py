"""The registry's tables (architecture.md §7), in SQLAlchemy Core: the one schema the rest of the code reads.

Portable across SQLite and PostgreSQL: timestamps are integer Unix milliseconds (``*_ms``), so comparisons and
arithmetic behave the same on both; structured values are JSON. The Alembic migrations under ``migrations/``
create exactly this schema (a test compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAME = 63
"""Names follow the manifest's name rule: at most 63 characters."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("approved", Boolean, nullable=False, default=False),
    Column("address", String(255)),
    Column("token_hash", String(128)),
    Column("gpu_vendor", String(32), nullable=False, default="none"),
    Column("total_vram", BigInteger, nullable=False, default=0),
    Column("available_vram", BigInteger, nullable=False, default=0),
    Column("reserved_vram", BigInteger, nullable=False, default=0),
    Column("total_ram", BigInteger, nullable=False, default=0),
    Column("available_ram", BigInteger, nullable=False, default=0),
    Column("max_replicas_per_model", Integer, nullable=False, default=1),
    Column("last_heartbeat_ms", BigInteger),
    Column("registered_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("last_error", Text),
    Column("credential_hash", String(128)),
    CheckConstraint("reserved_vram >= 0", name="reserved_not_negative"),
    CheckConstraint(
        "status IN ('registering', 'pending', 'healthy', 'unhealthy', 'draining', 'offline')", name="status"
    ),
)

join_tokens = Table(
    "join_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("uses_left", Integer, nullable=False),
    Column("created_by", String(255)),
    CheckConstraint("uses_left >= 0", name="uses_left_not_negative"),
)
"""Join tokens (architecture.md §3, "Admission"): only the SHA-256 of each token, never the token itself."""

node_labels = Table(
    "node_labels",
    metadata,
    Column("node", String(NAME), ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True),
    Column("key", String(NAME), primary_key=True),
    Column("value", String(NAME), nullable=False),
    Column("source", String(8), nullable=False),
    CheckConstraint("source IN ('manifest', 'auto')", name="source"),
)

node_backends = Table(
    "node_backends",
    metadata,
    Column("node", String(NAME), ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True),
    Column("backend", String(NAME), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("version", String(255)),
    Column("last_error", Text),
    Column("updated_ms", BigInteger, nullable=False),
    CheckConstraint("state IN ('installing', 'installed', 'failed')", name="state"),
)

instances = Table(
    "instances",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("backend", String(NAME), nullable=False),
    Column("model", Text, nullable=False),
    Column("options", JSON, nullable=False),
    Column("vram_bytes", BigInteger),
    Column("min_replicas", Integer, nullable=False),
    Column("max_replicas", Integer, nullable=False),
    Column("node_selector", JSON, nullable=False),
    Column("allowed_nodes", JSON),
    Column("priority", Integer, nullable=False, default=0),
    Column("route_policy", String(32), nullable=False),
    Column("placement", String(16), nullable=False),
    Column("auto_restart", Boolean, nullable=False),
    Column("max_restarts", Integer, nullable=False),
    Column("restart_delay_ms", BigInteger, nullable=False),
    Column("restart_max_delay_ms", BigInteger, nullable=False),
    Column("health", JSON, nullable=False),
    Column("rollout", JSON, nullable=False),
    Column("on_demand_start", Boolean, nullable=False),
    Column("idle_timeout_ms", BigInteger, nullable=False),
    Column("docker_enabled", Boolean, nullable=False),
    Column("command_override", JSON),
    Column("environment", JSON, nullable=False),
    Column("config_hash", String(80), nullable=False),
    Column("applied_revision", String(80)),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

replicas = Table(
    "replicas",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance", String(NAME), nullable=False),
    Column("node", String(NAME), ForeignKey("nodes.name", ondelete="CASCADE"), nullable=False),
    Column("replica", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("address", String(255)),
    Column("pid", Integer),
    Column("process_start", String(64)),
    Column("container_id", String(128)),
    Column("config_hash", String(80), nullable=False, default=""),
    Column("vram_bytes", BigInteger, nullable=False, default=0),
    Column("restarts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("in_flight", Integer, nullable=False, default=0),
    Column("last_used_ms", BigInteger),
    Column("updated_ms", BigInteger, nullable=False),
    Column("state_since_ms", BigInteger),
    Column("restart_requested_ms", BigInteger),
    UniqueConstraint("instance", "node", "replica"),
    CheckConstraint("state IN ('starting', 'running', 'unhealthy', 'stopping', 'failed')", name="state"),
)

replaced_replicas = Table(
    "replaced_replicas",
    metadata,
    Column("instance", String(NAME), primary_key=True),
    Column("node", String(NAME), primary_key=True),
    Column("replica", Integer, primary_key=True),
    Column("replaced_ms", BigInteger, nullable=False),
)
"""Tombstones of replicas forgotten on a lost node (``forget``): if the node returns and reports one again, it is
the surplus that the next plan stops first. A load or unload of the same replica ends its tombstone."""

scheduling_state = Table(
    "scheduling_state",
    metadata,
    Column("instance", String(NAME), primary_key=True),
    Column("unsatisfiable_ticks", Integer, nullable=False, default=0),
    Column("cooldown_until_ms", BigInteger),
    Column("capacity_digest", String(80), nullable=False, default=""),
    Column("updated_ms", BigInteger, nullable=False),
    # JSON [[code, nodes], ...]: why the last attempted placement failed, shown through the cooldown
    Column("reasons", Text),
)

vram_reservations = Table(
    "vram_reservations",
    metadata,
    Column("op_id", String(255), primary_key=True),
    Column("node", String(NAME), ForeignKey("nodes.name", ondelete="CASCADE"), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("released_ms", BigInteger),
    Column("release_reason", String(16)),
    Column("available_at_reserve", BigInteger, nullable=False),
    Column("reserved_after", BigInteger, nullable=False),
    CheckConstraint("bytes > 0", name="bytes_positive"),
    Index(None, "node", "released_ms"),
    Index(None, "released_ms", "expires_ms"),
)

pending_ops = Table(
    "pending_ops",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(400), nullable=False, unique=True),
    Column("node", String(NAME), nullable=False),
    Column("target", String(255), nullable=False),
    Column("op", String(32), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("last_error", Text),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    CheckConstraint("state IN ('pending', 'running', 'done', 'dead')", name="state"),
    Index(None, "state", "next_attempt_ms"),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("acquired_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

apply_log = Table(
    "apply_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("manifest_revision", String(80)),
    Column("manifest_digest", String(80), nullable=False),
    Column("plan_hash", String(80), nullable=False),
    Column("actions", JSON, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("who", String(255), nullable=False),
    Column("lease_epoch", BigInteger),
    Column("started_ms", BigInteger, nullable=False),
    Column("finished_ms", BigInteger, nullable=False),
    Index(None, "started_ms"),
)
