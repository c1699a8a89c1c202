-- Device identity bound to a key: each registration proves the installation's device key, and
-- its device id is derived from that key. The enrollment keeps the key's RFC 7638 thumbprint;
-- re-pairing replaces only an enrollment of the same user with the same proven device key.
-- Enrollments paired before device keys existed have none (NULL) and are never replaced by a
-- registration: only unpairing removes them.
ALTER TABLE enrollments ADD COLUMN device_key_thumbprint TEXT;
