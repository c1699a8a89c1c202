-- A user's deletion (`store::users::delete`) removes their rows from every table in one
-- transaction, which on SQLite holds the only writer. Five of those tables had no index on the
-- user, so each deletion read them whole: flows, pairing codes, authorization requests, FIDO
-- ceremonies and QR sessions (retention keeps weeks of them). These indexes let the deletion
-- read the user's rows only; `store::query_plans` checks every statement of the deletion.
-- The QR session's two are partial: a session gets its user when it is claimed (most never
-- are), and only a session restricted to a user names one at creation.
CREATE INDEX flows_by_user ON flows (application_id, user_id);
CREATE INDEX pairing_codes_by_user ON pairing_codes (application_id, user_id);
CREATE INDEX oidc_authorizations_by_user ON oidc_authorizations (application_id, user_id);
CREATE INDEX fido_ceremonies_by_user ON fido_ceremonies (application_id, user_id);
CREATE INDEX qr_sessions_by_user ON qr_sessions (application_id, user_id)
    WHERE user_id IS NOT NULL;
CREATE INDEX qr_sessions_restricted_to ON qr_sessions (application_id, restricted_user_id)
    WHERE restricted_user_id IS NOT NULL;
