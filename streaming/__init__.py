"""Tokens from a model to a client: framing, the hub, the event log, the runner, the control bus."""
