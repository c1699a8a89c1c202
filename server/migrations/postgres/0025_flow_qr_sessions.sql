-- QR login as an alternative inside a flow (`useQrCode`): the QR session a flow shows names its
-- flow, so that the session's approval completes that flow and no other. The session is
-- restricted to the flow's user and expires with the flow; it goes when the flow goes.
ALTER TABLE qr_sessions ADD COLUMN flow_id TEXT REFERENCES flows(id) ON DELETE CASCADE;
CREATE INDEX qr_sessions_by_flow ON qr_sessions (flow_id);
