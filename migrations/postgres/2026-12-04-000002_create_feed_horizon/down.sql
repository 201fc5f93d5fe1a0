DROP TABLE feed_horizon;
