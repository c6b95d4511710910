"""gunicorn settings for Streamgate (``gunicorn -c gunicorn.conf.py 'api:create_app()'``).

gevent workers: a waiting stream is a parked greenlet, not a pinned thread. Every value can be
overridden on the command line or with ``GUNICORN_CMD_ARGS``.
"""

import os
import shutil
import tempfile

# Every worker writes its metrics here; /metrics aggregates them (prometheus-client multiprocess).
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="streamgate-metrics-")

# gunicorn's gevent worker, accepting up to WORKER_ACCEPT_BATCH (8) connections a loop turn
# rather than the 1 gunicorn sets with several workers (streaming/worker.py).
worker_class = "streaming.worker.GeventWorker"
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


def on_starting(server):  # noqa: ARG001 - gunicorn hook signature
    """Start from empty metric files: samples of a previous run are not this run's."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def post_worker_init(worker):
    """Start this worker's keeper and control-bus reader (the dispatcher) at boot, then freeze
    the heap it built (streaming.metrics.settle_worker_heap: the collector stops walking it).

    The only place they start in a server (requests never start them): every worker must renew
    the leases of its runs, act on revocations and reap the runs of a worker that died, whatever
    traffic it has served so far. (Starting does no I/O that can fail: a Redis that is down is
    retried by the dispatcher's reader.)
    """
    from streaming.metrics import settle_worker_heap
    from streaming.services import start_services

    try:
        start_services(worker.wsgi)
    except Exception:  # noqa: BLE001 - serve anyway; the hub answers 503 without its dispatcher
        worker.log.exception("streamgate services did not start at boot")
    settle_worker_heap(worker.wsgi.extensions["streamgate.metrics"])


def pre_request(worker, req):
    """Hub connections (``GET /v1/events``) are answered with ``Connection: close``.

    The worker's hub may hold an idle one itself and ends it by closing it (streaming.takeover);
    said up front, no client sends another request on a connection that is about to close.
    """
    worker.log.debug("%s %s", req.method, req.path)  # gunicorn's own pre_request
    if req.method == "GET" and req.path == "/v1/events":
        req.must_close = True


def worker_exit(server, worker):  # noqa: ARG001 - gunicorn hook signature
    """End the hub connections this worker holds itself (streaming.takeover) with the last
    chunk, and release their subscriptions, rather than leave them to the process's exit."""
    if worker.pid != os.getpid() or getattr(worker, "wsgi", None) is None:
        return  # the master, for a worker it found dead
    from streaming.takeover import end_held_connections

    end_held_connections(worker.wsgi)


def child_exit(server, worker):  # noqa: ARG001 - gunicorn hook signature
    """A dead worker's live gauges no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ARG001 - gunicorn hook signature
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
