-- Authentication flows: the state machine a customer backend steps a user through
-- (POST /v1/flows). `data` is the flow's model as JSON (options, devices, the push or passcode
-- it waits for, the result); `version` changes with every transition, which is taken with a
-- conditional update on it, so two racing actions cannot both move a flow.
CREATE TABLE flows (
    id                 TEXT PRIMARY KEY,
    application_id     TEXT NOT NULL REFERENCES applications(id),
    user_id            TEXT NOT NULL,
    status             TEXT NOT NULL,
    version            BIGINT NOT NULL,
    data               TEXT NOT NULL,
    authentication_id  TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL
);
-- The follow-up that moves a flow when its push is answered finds it by the push.
CREATE INDEX flows_by_authentication ON flows (authentication_id);
-- Retention purges flows past their expiry.
CREATE INDEX flows_by_expiry ON flows (expires_at);

-- Every action applied to a flow, in order: the transitions, and the refused attempts (a wrong
-- passcode) with their error code.
CREATE TABLE flow_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    flow_id      TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    at           BIGINT NOT NULL,
    action       TEXT NOT NULL,
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    error        TEXT
);
CREATE INDEX flow_events_by_flow ON flow_events (flow_id, id);
