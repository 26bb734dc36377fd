-- See the Postgres migration of the same name.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
