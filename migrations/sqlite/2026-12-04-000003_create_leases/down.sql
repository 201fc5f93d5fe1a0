ALTER TABLE changes DROP COLUMN detail;
DROP TABLE leases;
