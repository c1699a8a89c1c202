-- The hosted prompt (`/prompt#<browser token>`): a flow created with `hosted` gets a browser
-- token, the page's only credential. The server finds the flow by the token's SHA-256 digest;
-- the token itself is kept sealed with the data key (secrets at rest) so the flow's answers can
-- repeat its `prompt_url`. The row goes with its flow.
CREATE TABLE flow_browser_tokens (
    flow_id       TEXT PRIMARY KEY REFERENCES flows(id) ON DELETE CASCADE,
    token_digest  TEXT NOT NULL UNIQUE,
    token         TEXT NOT NULL
);
