-- Authentication policies (docs/policy.md). Every save is a new version; nothing is
-- overwritten, so each decision names the version it used.
CREATE TABLE policies (
    application_id  TEXT NOT NULL REFERENCES applications(id),
    version         BIGINT NOT NULL,
    document        TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (application_id, version)
);

-- The groups a user belongs to, as the customer API sets them.
CREATE TABLE user_groups (
    application_id  TEXT NOT NULL REFERENCES applications(id),
    user_id         TEXT NOT NULL,
    group_name      TEXT NOT NULL,
    PRIMARY KEY (application_id, user_id, group_name)
);

-- Every policy decision: the version, the rule, the action, the reason and the values it
-- looked at (JSON). The accessing location (from the IP table) feeds later geovelocity checks.
CREATE TABLE policy_decisions (
    id              TEXT PRIMARY KEY,
    application_id  TEXT NOT NULL REFERENCES applications(id),
    user_id         TEXT NOT NULL,
    request_kind    TEXT NOT NULL,
    subject_id      TEXT,
    policy_version  BIGINT NOT NULL,
    rule            TEXT NOT NULL,
    action          TEXT NOT NULL,
    effect          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    inputs          TEXT NOT NULL,
    latitude        REAL,
    longitude       REAL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX policy_decisions_by_user ON policy_decisions (application_id, user_id, created_at);
CREATE INDEX policy_decisions_by_subject ON policy_decisions (subject_id);

-- The decision an authentication was made under (a JSON PolicyOutcome), returned with its status.
ALTER TABLE authentications ADD COLUMN policy TEXT;
