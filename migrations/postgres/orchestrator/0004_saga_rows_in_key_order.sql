-- SQLite only (see its 0004): a Postgres table is a heap with its primary key as an index
-- either way, so nothing changes here. The file keeps both backends at the same version.
SELECT 1;
