-- Languages (docs/i18n.md): a user's preferred language for the server's own texts, a BCP 47
-- tag checked by the API; NULL: none (English unless a request names another).
ALTER TABLE users ADD COLUMN locale TEXT;
