-- Archives are stored in chunks of at most 1 MiB, so that neither the API
-- replica storing one nor the controller reading one back needs it whole in
-- memory. `chunks` counts them; 0 marks an archive stored before, whole in
-- `archives.data` (new archives leave `data` empty).
ALTER TABLE archives ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0;

CREATE TABLE archive_chunks (
    digest  TEXT NOT NULL REFERENCES archives(digest) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (digest, seq)
);
