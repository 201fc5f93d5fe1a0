-- Live records: one row per record, the latest version only.
CREATE TABLE records (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    data TEXT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    created_by TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (collection, id)
);

-- One full snapshot per committed version.
CREATE TABLE revisions (
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    operation TEXT NOT NULL,
    data TEXT NOT NULL,
    changed_fields TEXT NOT NULL,
    principal TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (collection, record_id, version),
    FOREIGN KEY (collection, record_id) REFERENCES records (collection, id) ON DELETE CASCADE
);

-- The change feed. SQLite has one writer at a time, so sequence order is
-- commit order and txid stays 0.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    txid BIGINT NOT NULL DEFAULT 0,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    operation TEXT NOT NULL,
    principal TEXT NOT NULL,
    changed_at TIMESTAMP NOT NULL
);
CREATE INDEX changes_by_cursor ON changes (txid, seq);
CREATE INDEX changes_by_collection ON changes (collection, txid, seq);

-- Idempotency-Key records for POST creates.
CREATE TABLE idempotency_keys (
    principal TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    completed BOOLEAN NOT NULL DEFAULT 0,
    collection TEXT NOT NULL,
    record_id TEXT,
    response_body TEXT,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (principal, idempotency_key)
);
