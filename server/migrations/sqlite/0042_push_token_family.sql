-- The token family a push-mode CIBA request's delivery minted. Push clients never call the token
-- endpoint: the tokens are minted for the delivery. A delivery resumed by another instance after
-- the first one's lease lapsed mints afresh, and revokes the family recorded here in the same
-- write, so one family of tokens per request is ever valid.
ALTER TABLE ciba_requests ADD COLUMN push_token_family TEXT;
