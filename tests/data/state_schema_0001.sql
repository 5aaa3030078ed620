-- The state store's schema as create_all made it before migrations existed (SQLite), dumped from a
-- fresh store. A store of this shape (no alembic_version) is stamped at revision 0001, then upgraded.
CREATE TABLE releases (
	id INTEGER NOT NULL,
	name VARCHAR(63) NOT NULL,
	artifact_path TEXT NOT NULL,
	sha256 VARCHAR(64) NOT NULL,
	size BIGINT NOT NULL,
	talos_version VARCHAR(40) NOT NULL,
	kubernetes_version VARCHAR(40) NOT NULL,
	installer_image TEXT NOT NULL,
	extensions TEXT NOT NULL,
	kernel_args TEXT NOT NULL,
	upstream_sha256 VARCHAR(64) NOT NULL,
	template_hash VARCHAR(64) NOT NULL,
	build_seconds DOUBLE NOT NULL,
	state VARCHAR(16) NOT NULL,
	created_at DATETIME NOT NULL,
	state_changed_at DATETIME NOT NULL,
	note TEXT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (name)
);
CREATE TABLE rollouts (
	id VARCHAR(64) NOT NULL,
	kind VARCHAR(16) NOT NULL,
	release VARCHAR(63) NOT NULL,
	status VARCHAR(16) NOT NULL,
	reason TEXT NOT NULL,
	policy TEXT NOT NULL,
	"plan" TEXT NOT NULL,
	operator VARCHAR(128) NOT NULL,
	created_at DATETIME NOT NULL,
	updated_at DATETIME NOT NULL,
	heartbeat_at DATETIME,
	abort_requested BOOLEAN NOT NULL,
	decision VARCHAR(16) NOT NULL,
	PRIMARY KEY (id)
);
CREATE TABLE waves (
	rollout VARCHAR(64) NOT NULL,
	"index" INTEGER NOT NULL,
	name VARCHAR(128) NOT NULL,
	status VARCHAR(16) NOT NULL,
	budget INTEGER NOT NULL,
	failures INTEGER NOT NULL,
	reason TEXT NOT NULL,
	PRIMARY KEY (rollout, "index")
);
CREATE TABLE store_runs (
	rollout VARCHAR(64) NOT NULL,
	store VARCHAR(128) NOT NULL,
	wave INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	from_release VARCHAR(63),
	to_release VARCHAR(63) NOT NULL,
	step VARCHAR(128) NOT NULL,
	started_at DATETIME,
	ended_at DATETIME,
	reason TEXT NOT NULL,
	detail TEXT NOT NULL,
	PRIMARY KEY (rollout, store)
);
CREATE TABLE node_state (
	node VARCHAR(128) NOT NULL,
	store VARCHAR(128) NOT NULL,
	release VARCHAR(63),
	ready BOOLEAN NOT NULL,
	observed_at DATETIME NOT NULL,
	PRIMARY KEY (node)
);
CREATE INDEX ix_node_state_store ON node_state (store);
CREATE INDEX ix_node_state_release ON node_state (release);
CREATE TABLE store_release (
	store VARCHAR(128) NOT NULL,
	current VARCHAR(63),
	last_known_good VARCHAR(63),
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (store)
);
CREATE INDEX ix_store_release_current ON store_release (current);
CREATE TABLE store_locks (
	store VARCHAR(128) NOT NULL,
	holder VARCHAR(64),
	acquired_at DATETIME,
	PRIMARY KEY (store)
);
CREATE TABLE events (
	id INTEGER NOT NULL,
	ts DATETIME NOT NULL,
	rollout VARCHAR(64),
	store VARCHAR(128),
	node VARCHAR(128),
	kind VARCHAR(64) NOT NULL,
	reason TEXT NOT NULL,
	detail TEXT NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_events_rollout ON events (rollout);
