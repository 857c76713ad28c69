-- The shared dedup store of several Herald instances.
--
-- One row per (event_id, app_id, pushkey) key (a 16-byte hash of the three) that is either
-- claimed (delivered = false: an instance is delivering it; `owner` is that claim's random id)
-- or delivered (delivered = true: recorded after a successful delivery). `expires_at` (ms since
-- the Unix epoch, on the database's clock, so instances' clocks never matter) is the lease's end
-- for a claim and the TTL's end for a record: a row whose `expires_at` has passed may be claimed
-- again, and the pruner deletes it.
CREATE TABLE IF NOT EXISTS herald_dedup (
    key        BYTEA   NOT NULL PRIMARY KEY,
    delivered  BOOLEAN NOT NULL,
    expires_at BIGINT  NOT NULL,
    owner      BIGINT
);

CREATE INDEX IF NOT EXISTS herald_dedup_expires_at ON herald_dedup (expires_at);

-- Pushkeys an upstream called dead, by a 16-byte hash of (app_id, pushkey), until `expires_at`
-- (ms since the Unix epoch, database clock).
CREATE TABLE IF NOT EXISTS herald_dead_tokens (
    token      BYTEA  NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS herald_dead_tokens_expires_at ON herald_dead_tokens (expires_at);
