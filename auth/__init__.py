"""Identities and access: tenants, users, roles, app tokens, JWTs, revocation, channel access."""
