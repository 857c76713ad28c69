-- Pushkeys an upstream called dead (TokenDead), remembered for `store.dead_token_ttl` so that
-- homeservers which ignore `rejected` are answered without an upstream call. The token is a
-- 16-byte hash of (app_id, pushkey): no pushkey is stored in clear. `expires_at` is in
-- milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS dead_tokens (
    token      BLOB    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS dead_tokens_expires_at ON dead_tokens (expires_at);
