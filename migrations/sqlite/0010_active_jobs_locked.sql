-- Nothing to do: the Postgres migration of the same name adds a function
-- for concurrent writers, and SQLite has one writer at a time. Kept so
-- both drivers' migrations carry the same numbers.
SELECT 1;
