-- See the Postgres migration of the same name.
ALTER TABLE jobs ADD COLUMN sandbox INTEGER NOT NULL DEFAULT 0;
