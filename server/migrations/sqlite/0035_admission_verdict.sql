-- PostgreSQL's admission in one statement (`admission_verdict`, see its migration). SQLite's
-- one writer runs each admission alone: nothing to add here.
SELECT 1;
