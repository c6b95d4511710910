"""Shared fixtures: a real Redis server, real SQL databases, the fake upstream, apps and users.

- ``redis_server`` starts Debian's redis-server once per session on a free loopback port;
  ``redis`` flushes it before each test.
- ``db_url`` is a fresh SQLite file per test; tests marked ``db`` also run on PostgreSQL when
  ``TEST_POSTGRES_URL`` is set (``make test`` starts a throwaway cluster and sets it).
- ``fake_upstream`` is the deterministic OpenAI-compatible server from ``bench/``.
- ``app`` / ``client`` are in-process; ``live`` is real gunicorn gevent workers on loopback.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
import sqlalchemy

from bench.fake_upstream import FakeUpstream
from bench.stack import free_port, redis_argv, wait_for_redis

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse battery staple"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it (or fail the test)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


# --- Redis ----------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_lib.Redis:
        return redis_lib.Redis(port=self.port, decode_responses=True)


def start_redis(
    extra: list[str] | None = None, port: int | None = None, workdir: str | None = None
) -> RedisServer:
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="sg-redis-")
    proc = subprocess.Popen(
        redis_argv(port, workdir, "--maxclients", "20000", *(extra or [])),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_redis(port)
    return RedisServer(port, proc, workdir)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10
) -> None:
    """End a process this test session started, by its PID."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.proc)
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture()
def redis(redis_server: RedisServer) -> Iterator[redis_lib.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


# --- the fake upstream ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def fake_upstream(_upstream_server: FakeUpstream) -> FakeUpstream:
    _upstream_server.reset()
    return _upstream_server


# --- databases ------------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_url" in metafunc.fixturenames:
        backends = ["sqlite"]
        if metafunc.definition.get_closest_marker("db") and os.environ.get("TEST_POSTGRES_URL"):
            backends.append("postgresql")
        metafunc.parametrize("db_backend", backends, indirect=False)


@pytest.fixture()
def db_url(db_backend: str, tmp_path: Path) -> Iterator[str]:
    if db_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'streamgate.db'}"
        return
    base = os.environ["TEST_POSTGRES_URL"]
    name = "sg_" + secrets.token_hex(6)
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield base.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# --- apps -----------------------------------------------------------------------------------------


def app_config(redis_url: str, db_url: str, llm_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "TESTING": True,
        "JWT_SECRET_KEY": TEST_SECRET,
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "LLM_BASE_URL": llm_url,
        "LLM_MODELS": ["fake-model"],
        "JWT_COOKIE_SECURE": False,
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    """Override in a test module to change the app's configuration."""
    return {}


@pytest.fixture()
def app(
    redis: redis_lib.Redis,
    redis_server: RedisServer,
    db_url: str,
    fake_upstream: FakeUpstream,
    app_overrides: dict[str, Any],
) -> Iterator[Any]:
    from api import create_app
    from core.store import db
    from streaming.control import stop_services

    application = create_app(
        app_config(redis_server.url, db_url, fake_upstream.base_url, **app_overrides)
    )
    with application.app_context():
        db.create_all()
        yield application
        finish_runs(application)
        stop_services(application)
        db.session.remove()
        db.drop_all()
        db.engine.dispose()
    application.extensions["streamgate.redis"].close()


def finish_runs(application: Any, timeout: float = 10.0) -> None:
    """Stop this process's generations and wait for their threads to settle.

    A run that outlived its test would write its record (and hold a database connection) after
    the test's database was dropped.
    """
    import threading

    from streaming.generation import stopped_outcome
    from streaming.runner import registry

    for handle in registry(application).snapshot():
        handle.stop(stopped_outcome("cancelled", reason="test teardown"))
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == "streamgate-run" and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


@pytest.fixture()
def app_services(app: Any) -> Any:
    """The in-process app's dispatcher and keeper (as gunicorn's ``post_worker_init`` starts them):
    for tests that read the hub in-process or need runs stopped over the control bus."""
    from streaming.services import start_services

    return start_services(app)  # stopped by the app fixture's teardown


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


# --- tenants, users, tokens -----------------------------------------------------------------------


@pytest.fixture()
def make_tenant() -> Callable[..., Any]:
    """Create a tenant in the current app context."""
    from auth.models import Tenant
    from core.store import db

    def make(
        slug: str | None = None,
        *,
        models: list[str] | None = None,
        limits: dict[str, int] | None = None,
    ) -> Any:
        slug = slug or "t-" + secrets.token_hex(4)
        tenant = Tenant(
            slug=slug, name=slug.title(), allowed_models=models or ["fake-model"], limits=limits
        )
        db.session.add(tenant)
        db.session.commit()
        return tenant

    return make


@pytest.fixture()
def make_user(make_tenant: Callable[..., Any]) -> Callable[..., Any]:
    """Create a user (and a tenant for it unless one is given) in the current app context."""
    from argon2 import PasswordHasher

    from auth.models import User
    from core.store import db

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # fast in tests only
    password_hash = hasher.hash(PASSWORD)

    def make(
        tenant: Any = None,
        *,
        role: str = "member",
        email: str | None = None,
        limits: dict[str, int] | None = None,
    ) -> Any:
        tenant = tenant or make_tenant()
        user = User(
            tenant_id=tenant.id,
            email=email or f"{secrets.token_hex(4)}@example.com",
            password_hash=password_hash,
            role=role,
            limits=limits,
        )
        db.session.add(user)
        db.session.commit()
        return user

    return make


@pytest.fixture()
def auth_headers() -> Callable[..., dict[str, str]]:
    """``Authorization`` headers for a user's fresh access token (current app context)."""
    from auth.tokens import issue_user_tokens

    def headers(user: Any) -> dict[str, str]:
        tokens = issue_user_tokens(user_id=user.id, tenant_id=user.tenant_id, role=user.role)
        return {"Authorization": "Bearer " + tokens["access_token"]}

    return headers


# --- live gunicorn servers ------------------------------------------------------------------------


@dataclass
class LiveServer:
    """A gunicorn master with gevent workers, and an in-process app bound to the same stores."""

    url: str
    proc: subprocess.Popen[bytes]
    app: Any
    env: dict[str, str]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)


def start_gunicorn(
    env: dict[str, str], log_path: Path, workers: int = 2
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "-w",
                str(workers),
                "-b",
                f"127.0.0.1:{port}",
                "api:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail("gunicorn exited:\n" + log_path.read_text(errors="replace")[-4000:])
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=30, interval=0.1)
    except BaseException:
        stop_process(proc)  # a server that came up too late must not outlive the failed test
        raise
    return url, proc


def live_env(redis_url: str, db_url: str, llm_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(
        JWT_SECRET_KEY=TEST_SECRET,
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        LLM_BASE_URL=llm_url,
        LLM_MODELS="fake-model",
        JWT_COOKIE_SECURE="false",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)  # live_overrides may replace any of the above (e.g. LLM_BASE_URL)
    return env


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    """Override in a test module to pass extra environment to the live server."""
    return {}


@pytest.fixture()
def live(
    redis: redis_lib.Redis,
    redis_server: RedisServer,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    live_overrides: dict[str, str],
) -> Iterator[LiveServer]:
    """Real gunicorn gevent workers on loopback, sharing Redis and SQLite with ``live.app``."""
    from api import create_app
    from core.store import db
    from streaming.control import stop_services

    db_url = f"sqlite:///{tmp_path / 'live.db'}"
    application = create_app(app_config(redis_server.url, db_url, fake_upstream.base_url))
    with application.app_context():
        db.create_all()
        log_path = tmp_path / "gunicorn.log"
        env = live_env(redis_server.url, db_url, fake_upstream.base_url, **live_overrides)
        url, proc = start_gunicorn(env, log_path)
        server = LiveServer(url, proc, application, env, log_path)
        try:
            yield server
        finally:
            stop_process(proc)
            stop_services(application)
            db.session.remove()
            db.engine.dispose()
    application.extensions["streamgate.redis"].close()
