-- A user's deletion removes the nonces of their devices' calls, keyed `<enrollment id>:<nonce>`,
-- by a range of the key (`store::nonces::FORGET_ENROLLMENT`: from `<enrollment id>:` up to
-- `<enrollment id>;`), which the primary key serves only if keys are ordered byte by byte. The
-- database's own collation need not be (a linguistic one sorts punctuation apart): the key is
-- an opaque identifier, so it is compared in the `C` collation. Equality, and so the key's
-- uniqueness and every look-up by it, is unchanged; the primary key is rebuilt.
ALTER TABLE device_nonces ALTER COLUMN nonce_key TYPE TEXT COLLATE "C";
