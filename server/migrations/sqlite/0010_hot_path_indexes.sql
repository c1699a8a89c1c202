-- Push-bombing limits count a user's recent requests on every new request: find them by
-- application, user and creation time instead of scanning the table.
CREATE INDEX authentications_by_user ON authentications (application_id, user_id, created_at);
