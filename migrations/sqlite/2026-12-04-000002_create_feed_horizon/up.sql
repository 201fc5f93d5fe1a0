-- The position of the newest change deleted by feed retention. A cursor
-- below it has missed changes, so readers answer it with 410 Gone.
CREATE TABLE feed_horizon (
    id INTEGER PRIMARY KEY,
    txid BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
INSERT INTO feed_horizon (id, txid, seq) VALUES (1, 0, 0);
