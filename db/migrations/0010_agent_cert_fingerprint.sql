-- The SHA-256 fingerprint (hex, of the DER) of the TLS certificate a workspace's agent created at
-- first boot and registered with its one-time token: the worker pins it when it calls the agent.
ALTER TABLE workspaces ADD COLUMN IF NOT EXISTS agent_cert_sha256 text;
