-- The admission functions plan their counts the way `store::query_plans` checks them, whatever
-- the session asks for. The server's sessions ask for generic plans (`plan_cache_mode` in the
-- URL's options, `store::plan_cache`), but an operator may choose PostgreSQL's default there,
-- and a pooler that drops the startup options (PgBouncer with `ignore_startup_parameters =
-- options`) makes that choice silently. A custom plan of `admission_verdict`'s pending count,
-- made for a time after every stored expiry once the statistics show almost no unexpired
-- request, walks the requests' expiry index through every user's unexpired requests on each
-- admission; the generic plan reads the user's own by their index. A function's own setting
-- holds only while it runs: every other statement keeps the session's choice.
ALTER FUNCTION admission_verdict SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION qr_session_admitted SET plan_cache_mode = force_generic_plan;
