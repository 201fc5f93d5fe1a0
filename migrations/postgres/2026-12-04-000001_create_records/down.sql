DROP TABLE idempotency_keys;
DROP TABLE changes;
DROP TABLE revisions;
DROP TABLE records;
