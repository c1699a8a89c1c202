-- Push delivery: an application may have a webhook that receives every push for its devices
-- (the customer relays it to the app by its own channel). Each authentication records how its
-- push went; a failed push never loses the request: the device can always pull it.
ALTER TABLE applications ADD COLUMN push_webhook_url TEXT;
ALTER TABLE authentications ADD COLUMN push_state TEXT NOT NULL DEFAULT 'none';
ALTER TABLE authentications ADD COLUMN push_attempts BIGINT NOT NULL DEFAULT 0;
