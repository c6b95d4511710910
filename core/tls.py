"""TLS settings for outgoing HTTPS (model servers, webhook receivers), loaded once per process.

Loading a CA bundle costs ~25 ms of CPU: each new client used to pay it again (twice per model
server per app, once per webhook delivery).
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context(trust_env: bool = True) -> ssl.SSLContext:
    """httpx's default context: certifi's CAs, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when
    ``trust_env``."""
    return httpx.create_ssl_context(trust_env=trust_env)
