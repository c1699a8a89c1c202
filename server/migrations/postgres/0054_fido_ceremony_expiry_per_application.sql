-- A new ceremony's housekeeping deletes the expired ceremonies of its own application only:
-- what is expired is judged by the clock of the instance that stores the ceremony, and one
-- application's clock (or a test's) never decides for another's rows. The expiry index leads
-- with the application so that delete reads only that application's expired ceremonies.
DROP INDEX fido_ceremonies_by_expiry;
CREATE INDEX fido_ceremonies_by_application_expiry ON fido_ceremonies (application_id, expires_at);
