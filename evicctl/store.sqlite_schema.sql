-- evicctl store, migration 1. The manager is the only writer of placement state;
-- the CLI and dashboard read, and write rows in `commands` only.
-- Times are unix seconds (REAL, UTC). Sizes are bytes. Bandwidths are bytes/s.

CREATE TABLE IF NOT EXISTS manager (
    id            INTEGER PRIMARY KEY CHECK (id = 1),   -- one row: the running (or last) manager
    pid           INTEGER NOT NULL,
    host          TEXT    NOT NULL,
    started_at    REAL    NOT NULL,
    heartbeat_at  REAL    NOT NULL,
    stopped_at    REAL,                                  -- set on clean shutdown
    version       TEXT    NOT NULL,
    config_json   TEXT    NOT NULL DEFAULT '{}'
);

CREATE TABLE IF NOT EXISTS tiers (
    name            TEXT PRIMARY KEY,                    -- gpu | cpu | disk | redis
    backend         TEXT NOT NULL,
    rank            INTEGER NOT NULL,                    -- 0 = fastest
    capacity_bytes  INTEGER NOT NULL,
    used_bytes      INTEGER NOT NULL DEFAULT 0,
    read_bps        REAL    NOT NULL DEFAULT 0,
    write_bps       REAL    NOT NULL DEFAULT 0,
    hits            INTEGER NOT NULL DEFAULT 0,
    updated_at      REAL    NOT NULL
);

CREATE TABLE IF NOT EXISTS contexts (
    id              TEXT PRIMARY KEY,
    label           TEXT,
    tenant          TEXT NOT NULL DEFAULT 'default',
    tokens          INTEGER NOT NULL,
    raw_bytes       INTEGER NOT NULL,                    -- size of the uncompressed KV
    created_at      REAL NOT NULL,
    last_access_at  REAL NOT NULL,
    hits            INTEGER NOT NULL DEFAULT 0,
    misses          INTEGER NOT NULL DEFAULT 0,
    freq            REAL NOT NULL DEFAULT 0,             -- decayed accesses per second
    utility         REAL,                                -- of the current placement, as last planned
    pin_tier        TEXT,
    pin_codec       TEXT,
    quality_floor   REAL
);
CREATE INDEX IF NOT EXISTS contexts_tenant ON contexts (tenant);
CREATE INDEX IF NOT EXISTS contexts_last_access ON contexts (last_access_at);

-- One row per known context. tier = 'dropped' means no stored KV (recomputed on next use).
CREATE TABLE IF NOT EXISTS placements (
    context_id    TEXT PRIMARY KEY REFERENCES contexts (id) ON DELETE CASCADE,
    tier          TEXT NOT NULL,
    codec         TEXT NOT NULL,
    stored_bytes  INTEGER NOT NULL,
    checksum      TEXT,                                  -- sha256 of the stored file (disk tier)
    location      TEXT,                                  -- file path / redis key, where it has one
    since         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS placements_tier ON placements (tier);

CREATE TABLE IF NOT EXISTS profiles (
    context_id    TEXT NOT NULL REFERENCES contexts (id) ON DELETE CASCADE,
    codec         TEXT NOT NULL,
    metric        TEXT NOT NULL DEFAULT 'teacher-forced', -- teacher-forced | answer-similarity
    quality       REAL NOT NULL,                          -- estimate used by the placer, in [0, 1]
    quality_sd    REAL,                                   -- its uncertainty (posterior sd)
    raw_mean      REAL,                                   -- mean of this context's own measurements
    f1            REAL,                                   -- ground-truth token F1 where answers exist
    n_queries     INTEGER NOT NULL,
    measured_at   REAL NOT NULL,
    PRIMARY KEY (context_id, codec, metric)
);

CREATE TABLE IF NOT EXISTS events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    ts              REAL NOT NULL,
    context_id      TEXT,
    kind            TEXT NOT NULL,      -- admit | move | compress | evict | drop | lost | recovery | pin | unpin | command | reprofile ...
    from_tier       TEXT,
    to_tier         TEXT,
    from_codec      TEXT,
    to_codec        TEXT,
    bytes           INTEGER,
    utility_before  REAL,
    utility_after   REAL,
    reason          TEXT,               -- admit | capacity | utility | operator | pin | quality-floor | lost | recovery ...
    actor           TEXT NOT NULL,      -- 'policy' or the OS user who asked
    command_id      INTEGER REFERENCES commands (id)
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_context ON events (context_id, ts);

CREATE TABLE IF NOT EXISTS commands (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at   REAL NOT NULL,
    actor        TEXT NOT NULL,
    verb         TEXT NOT NULL,          -- pin | unpin | evict | recompress | promote
    context_id   TEXT,
    args_json    TEXT NOT NULL DEFAULT '{}',
    status       TEXT NOT NULL DEFAULT 'pending',  -- pending | done | refused | failed
    result       TEXT,                   -- JSON: message, plan, event ids
    finished_at  REAL
);
CREATE INDEX IF NOT EXISTS commands_pending ON commands (status, id);

CREATE TABLE IF NOT EXISTS samples (
    ts              REAL NOT NULL,
    tier            TEXT NOT NULL,
    used_bytes      INTEGER NOT NULL,
    capacity_bytes  INTEGER NOT NULL,
    hits            INTEGER NOT NULL,   -- cumulative per tier at ts
    misses          INTEGER NOT NULL    -- cumulative misses (all tiers) at ts
);
CREATE INDEX IF NOT EXISTS samples_tier_ts ON samples (tier, ts);
