-- Edit leases: at most one row per record. A row whose expires_at has
-- passed is free; acquiring takes it over in one statement.
CREATE TABLE leases (
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    holder TEXT NOT NULL,
    acquired_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    PRIMARY KEY (collection, record_id)
);

-- Extra facts of a change that is not a record write, such as a lease
-- event's holder and expiry, as JSON.
ALTER TABLE changes ADD COLUMN detail TEXT;
