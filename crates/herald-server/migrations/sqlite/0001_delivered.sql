-- One row per (event_id, app_id, pushkey) delivered within the TTL. The key is a 16-byte hash of
-- the three (length-prefixed) so that ten million rows stay a few hundred megabytes.
CREATE TABLE IF NOT EXISTS delivered (
    key         BLOB    NOT NULL PRIMARY KEY,
    recorded_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS delivered_recorded_at ON delivered (recorded_at);
