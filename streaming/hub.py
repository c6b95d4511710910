"""Placeholder hub (channel mode lands with issue 5)."""

from flask_sse import ServerSentEventsBlueprint

hub = ServerSentEventsBlueprint("events", __name__)
