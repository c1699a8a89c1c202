-- An action's claim on a flow holds until the action moves the flow, is refused, or gives up
-- (`claimed_until`, milliseconds since the Unix epoch; NULL when nobody holds it). Another
-- action, even one that read the flow after the claim, is refused while the claim holds, so
-- racing actions cannot take the flow from one another in turn and all be refused. A claim
-- whose action never came back (the process stopped) lapses at that time.
ALTER TABLE flows ADD COLUMN claimed_until BIGINT;
