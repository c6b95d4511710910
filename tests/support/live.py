"""Live gunicorn gevent workers for the tests, and the pool that shares them between tests.

Starting gunicorn (and importing the app in its workers) is the most expensive thing a test
does. Servers start from this test process's fork server (``tests.support.forkserver``), which
has imported the app once, and a live server is kept for as long as the tests that follow ask
for the same environment (``live_overrides``). Between two tests the pool:

- waits until the server is idle: no generation running and no hub connection open on any of its
  workers (``/metrics``), nothing in the live set, nothing open at the fake upstream. Only then is
  Redis flushed (the ``redis`` fixture), so no run or subscription of the previous test writes
  into the next one's Redis;
- deletes every SQL row (tables in reverse dependency order);
- checks that the same workers still run and that each has its hub reader (pub/sub connection)
  subscribed, so a test may rely on the control bus from its first request.

A server that is not idle after a test, whose workers changed (a test killed one), or whose test
failed is stopped and replaced: the next test never inherits a half-broken server. Everything a
worker keeps in memory across tests is keyed by random ids (tenants, users, streams, tokens) or
re-read when Redis no longer has its version key, so a flushed Redis and emptied tables are
consistent with what the workers hold.

Only one server (with its peers, for two-node tests) runs at a time per test process: servers of
different configurations never share the Redis, so one's keeper cannot reap another's runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from bench.stack import gunicorn_argv as gateway_argv
from tests.support.config import ROOT, app_config, live_env
from tests.support.forkserver import ForkedProcess, fork_server
from tests.support.processes import RedisServer, free_port, stop_process, worker_pids
from tests.support.waiting import wait_until

IDLE_TIMEOUT_S = 20.0


def gunicorn_argv(port: int, workers: int = 2) -> list[str]:
    """The gunicorn command line of a live test server: the bench's, from the same Stack module
    the cluster and soak tests already use."""
    return gateway_argv(port, workers)


def start_gunicorn(
    env: dict[str, str], log_path: Path, workers: int = 2
) -> tuple[str, ForkedProcess]:
    """Start gunicorn on a free loopback port and wait for ``/healthz``; returns (url, process).

    When another process took the port between choosing and binding it, another is chosen.
    """
    for attempt in range(5):
        port = free_port()
        proc = fork_server().spawn(gunicorn_argv(port, workers), env, ROOT, log_path)
        url = f"http://127.0.0.1:{port}"
        lost_race = False

        def up(proc: ForkedProcess = proc, url: str = url) -> bool:
            nonlocal lost_race
            if proc.poll() is not None:
                text = log_path.read_text(errors="replace")
                if "Address already in use" in text[-4000:]:
                    lost_race = True
                    return True
                pytest.fail("gunicorn exited:\n" + text[-4000:])
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(up, timeout=60, interval=0.1)
        except BaseException:
            stop_process(proc)  # a server that came up too late must not outlive the failed test
            raise
        if lost_race and attempt < 4:
            stop_process(proc)
            continue
        return url, proc
    raise AssertionError("unreachable")


def refused_start(env: dict[str, str], tmp_path: Path) -> str:
    """Start gunicorn with ``env``, which it must refuse: it exits non-zero. Its log."""
    log = tmp_path / "gunicorn.log"
    proc = fork_server().spawn(gunicorn_argv(free_port()), env, ROOT, log)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        pytest.fail("gunicorn started with a bad setting:\n" + log.read_text()[-3000:])
    assert proc.returncode != 0
    return log.read_text(errors="replace")


@dataclass
class LiveServer:
    """A gunicorn master with gevent workers, and an in-process app bound to the same stores."""

    url: str
    proc: ForkedProcess
    app: Any
    env: dict[str, str]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    log_offset: int = 0  # where this test's part of a shared server's log starts

    def log(self) -> str:
        """What the server logged since the current test started."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)

    def workers(self) -> list[int]:
        return worker_pids(self.proc.pid)


def metric_sum(url: str, name: str) -> float:
    """A metric from ``/metrics`` summed over its labels and the server's workers."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def hub_readers(redis: Any, pids: list[int]) -> list[str]:
    """The pub/sub connections (``sg-hub:<pid>``) of these worker processes, one per connection."""
    names = {f"sg-hub:{pid}" for pid in pids}
    return sorted(c["name"] for c in _pubsub_clients(redis) if c.get("name", "") in names)


def _pubsub_clients(redis: Any) -> list[dict[str, Any]]:
    """Pub/sub connections of a Redis, or of every reachable node of a Redis Cluster."""
    if not isinstance(redis, RedisCluster):
        return list(redis.client_list(_type="pubsub"))
    found: list[dict[str, Any]] = []
    for node in redis.get_nodes():
        with contextlib.suppress(RedisError):
            found += redis.client_list(_type="pubsub", target_nodes=node)
    return found


class LiveCluster:
    """One live configuration: a SQLite file, a primary gunicorn and any peers started on it."""

    def __init__(
        self,
        key: tuple[tuple[str, str], ...],
        redis_server: RedisServer,
        llm_url: str,
        directory: Path | None = None,
    ) -> None:
        self.key = key
        self.redis_server = redis_server
        self.llm_url = llm_url
        self.dir = directory or Path(tempfile.mkdtemp(prefix="sg-live-"))
        self.db_url = f"sqlite:///{self.dir / 'live.db'}"
        self.env = live_env(redis_server.url, self.db_url, llm_url, **dict(key))
        self.nodes: list[tuple[str, ForkedProcess, Path, list[int]]] = []
        self.served = 0  # tests that used it
        self._create_tables()
        self.add_node()

    def _create_tables(self) -> None:
        app = self.make_app()
        try:
            from core.store import db

            with app.app_context():
                db.create_all()
                db.engine.dispose()
        finally:
            close_app(app)

    def make_app(self) -> Any:
        """A fresh in-process app on this server's Redis and database (one per test)."""
        from api import create_app

        return create_app(app_config(self.redis_server.url, self.db_url, self.llm_url))

    def add_node(self) -> str:
        """Start another gunicorn master on the same environment and database; its URL."""
        log_path = self.dir / f"gunicorn-{len(self.nodes)}.log"
        url, proc = start_gunicorn(self.env, log_path)
        self.nodes.append((url, proc, log_path, []))
        client = self.redis_server.client()
        try:
            self._wait_ready(client, self.nodes[-1])
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()
        return url

    def _wait_ready(self, redis: Any, node: tuple[str, Any, Path, list[int]]) -> None:
        """Both workers are up, each with its hub reader subscribed (the control bus works)."""
        _, proc, _, pids = node

        def ready() -> bool:
            workers = worker_pids(proc.pid)
            return len(workers) == 2 and len(hub_readers(redis, workers)) == 2

        wait_until(ready, timeout=30, interval=0.05)
        pids[:] = worker_pids(proc.pid)

    def server(self, app: Any, index: int = 0) -> LiveServer:
        url, proc, log_path, _ = self.nodes[index]
        return LiveServer(url, proc, app, self.env, log_path, log_offset=log_path.stat().st_size)

    def problem(self, redis: Any) -> str | None:
        """Why this cluster cannot serve another test (a dead or replaced worker), or None."""
        for url, proc, _, pids in self.nodes:
            if proc.poll() is not None:
                return f"gunicorn {url} exited"
            if worker_pids(proc.pid) != pids:
                return f"the workers of {url} changed"
            if hub_readers(redis, pids) != sorted(f"sg-hub:{pid}" for pid in pids):
                # A reader reconnecting after a test cut it: wait for it, then check again.
                try:
                    wait_until(
                        lambda pids=pids: len(hub_readers(redis, pids)) == len(pids), timeout=10
                    )
                except pytest.fail.Exception:
                    return f"the hub readers of {url} did not come back"
        return None

    def wait_idle(self, redis: Any, upstream_active: Callable[[], int]) -> str | None:
        """Wait until nothing runs or listens on any node; None, or what is still busy."""
        last: dict[str, float] = {}

        def idle() -> bool:
            last.clear()
            for url, *_ in self.nodes:
                last[url + " streams"] = metric_sum(url, "streamgate_active_streams")
                last[url + " subscribers"] = metric_sum(url, "streamgate_active_subscribers")
            last["live set"] = redis.zcard("sg:live")
            last["upstream requests"] = upstream_active()
            return not any(last.values())

        try:
            wait_until(idle, timeout=IDLE_TIMEOUT_S, interval=0.05)
        except (pytest.fail.Exception, httpx.HTTPError):
            return "not idle after the test: " + repr({k: v for k, v in last.items() if v})
        return None

    def empty_tables(self, app: Any) -> None:
        """Delete every row, children before parents (the schema stays)."""
        from core.store import db

        with app.app_context():
            with db.engine.begin() as conn:
                for table in reversed(db.metadata.sorted_tables):
                    conn.execute(table.delete())
            db.session.remove()

    def stop(self) -> None:
        for _, proc, _, _ in self.nodes:
            stop_process(proc)
        self.nodes.clear()

    def kill(self) -> None:
        """Stop at once, workers first: a discarded server may still be running a test's work,
        which must not reach the next test's (flushed) Redis."""
        for _, proc, _, _ in self.nodes:
            for pid in worker_pids(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stop_process(proc, signal.SIGKILL)
        self.nodes.clear()

    def stop_later(self) -> threading.Thread:
        """Stop the nodes on a thread: the next server need not wait for their graceful exit.

        They are idle (or discarded for not being so) and the next test's Redis is flushed and
        its tables emptied after this, so nothing they do while exiting reaches that test.
        """
        for _, proc, _, _ in self.nodes:
            if proc.poll() is None:
                proc.terminate()  # no new work from here on
        thread = threading.Thread(target=self.stop, name="stop-live-server", daemon=True)
        thread.start()
        return thread


def close_app(app: Any) -> None:
    """Stop an in-process app's services and release its database and Redis connections."""
    from core.store import db
    from streaming.control import stop_services

    stop_services(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    app.extensions["streamgate.redis"].close()
    app.extensions["streamgate.redis.runs"].close()


@dataclass
class LivePool:
    """The live cluster of this test process, kept while tests ask for the same environment."""

    redis_server: RedisServer
    llm_url: str
    make_dir: Callable[[], Path] | None = None  # where a new cluster keeps its database and logs
    current: LiveCluster | None = None
    started: int = 0
    replaced: list[str] = field(default_factory=list)
    stopping: list[threading.Thread] = field(default_factory=list)

    def get(self, overrides: dict[str, str], redis: Any, *, fresh: bool = False) -> LiveCluster:
        """The cluster for ``overrides``: the current one when it fits and is sound, else new."""
        key = tuple(sorted((str(k), str(v)) for k, v in overrides.items()))
        current = self.current
        if current is not None and current.key == key and not (fresh and current.served):
            problem = current.problem(redis)
            if problem is None:
                current.served += 1
                return current
            self.discard(problem)
        self.release()
        directory = self.make_dir() if self.make_dir is not None else None
        self.current = LiveCluster(key, self.redis_server, self.llm_url, directory)
        self.current.served += 1
        self.started += 1
        return self.current

    def discard(self, reason: str) -> None:
        """Stop the current cluster; the next test that needs one starts a fresh one."""
        self.replaced.append(reason)
        if self.current is not None:
            self.current.kill()
            self.current = None

    def release(self) -> None:
        """Let the current cluster go (it stops in the background)."""
        if self.current is not None:
            self.stopping.append(self.current.stop_later())
            self.current = None

    def close(self) -> None:
        """Stop everything this pool started and wait for it (end of the session)."""
        self.release()
        for thread in self.stopping:
            thread.join(60)
