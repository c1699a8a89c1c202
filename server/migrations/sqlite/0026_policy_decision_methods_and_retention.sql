-- The methods a `require` decision named, most preferred first (comma-separated policy method
-- names; empty for other decisions), so every path returns them with the decision it read back.
ALTER TABLE policy_decisions ADD COLUMN methods TEXT NOT NULL DEFAULT '';

-- Decisions are purged with the retention sweep by their age.
CREATE INDEX policy_decisions_by_time ON policy_decisions (created_at);
