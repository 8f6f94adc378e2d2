-- The schema of state.db as ferry-appliance wrote it before the schema was versioned
-- (appliance/src/state.rs at commit 3a86dc8), verbatim. Frozen: migration 1 must adopt a
-- database created by exactly this, and a test checks that it does.
CREATE TABLE IF NOT EXISTS releases (
    name TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    created TEXT NOT NULL,
    expires TEXT NOT NULL,
    key_id TEXT NOT NULL,
    entries INTEGER NOT NULL,
    payload_bytes INTEGER NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    imported_at TEXT NOT NULL,
    PRIMARY KEY (name, sequence)
);
CREATE TABLE IF NOT EXISTS floors (
    name TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    name TEXT,
    created TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    access_key_id TEXT NOT NULL UNIQUE,
    access_secret_sha256 TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    enrolled_at TEXT NOT NULL,
    active INTEGER NOT NULL,
    version TEXT NOT NULL,
    local_metadata TEXT NOT NULL,
    tags TEXT NOT NULL,
    policy_revision INTEGER NOT NULL DEFAULT 0,
    replace_token TEXT,
    action_seq INTEGER NOT NULL DEFAULT 0,
    enroll_seq INTEGER NOT NULL DEFAULT 0,
    last_checkin TEXT,
    last_status TEXT,
    last_message TEXT,
    components TEXT,
    upgrade_details TEXT,
    upgrade_state TEXT,
    upgrade_target TEXT,
    upgraded_at TEXT,
    unenrolled_at TEXT,
    audit_reason TEXT,
    audit_time TEXT
);
CREATE INDEX IF NOT EXISTS agents_by_policy ON agents (policy_id);
CREATE TABLE IF NOT EXISTS actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    data TEXT,
    created_at TEXT NOT NULL,
    start_time TEXT,
    expiration TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS action_targets (
    agent_id TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES actions (seq),
    cancelled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS action_results (
    action_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    acked_at TEXT NOT NULL,
    error TEXT,
    data TEXT,
    PRIMARY KEY (action_id, agent_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    action_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    name TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    status TEXT NOT NULL,
    created TEXT NOT NULL,
    completed TEXT,
    sha256 TEXT
);
CREATE TABLE IF NOT EXISTS upload_chunks (
    upload_id TEXT NOT NULL,
    num INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (upload_id, num)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_revisions (
    policy_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    content_sha256 TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (policy_id, revision)
);
CREATE TABLE IF NOT EXISTS active (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    FOREIGN KEY (name, sequence) REFERENCES releases (name, sequence)
);
-- Agent ids the operator revoked. A table of their own (CREATE ... IF NOT EXISTS, as
-- every schema change here: an older state.db gains it when opened) rather than a
-- column of agents, whose row an enrollment replaces whole.
CREATE TABLE IF NOT EXISTS revoked_agents (
    id TEXT PRIMARY KEY,
    revoked_at TEXT NOT NULL
);
