"""The signer: the one process that reads the report-signing key and signs our in-toto statements for callers
holding its bearer token (``modelcustody serve signer``)."""
