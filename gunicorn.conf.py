"""gunicorn settings for Streamgate (``gunicorn -c gunicorn.conf.py 'api:create_app()'``).

gevent workers: a waiting stream is a parked greenlet, not a pinned thread. Every value can be
overridden on the command line or with ``GUNICORN_CMD_ARGS``.
"""

import os

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "20000"))
bind = os.environ.get("BIND", "127.0.0.1:8000")
# Streams are long-lived; a worker is only "stuck" if its event loop is, which gevent's heartbeat
# to the master detects independently of request length.
timeout = 60
graceful_timeout = 20
keepalive = 75
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
