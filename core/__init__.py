"""Shared infrastructure, the bottom layer: db and Redis handles, ids, time, ``ApiError``, the
TLS settings of outgoing HTTPS.

It imports nothing of Streamgate's; every other package may import it. Nothing else lives here.
"""
