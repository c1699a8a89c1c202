-- Nothing on SQLite: it has no plan cache to choose a mode for. The PostgreSQL migration of this
-- number makes its admission functions plan their counts generically whatever the session asks.
SELECT 1;
