"""Shared fixtures: a real Redis server, real SQL databases, the fake upstream, apps and users.

Built on ``tests/support/`` (import helpers from there, never from this file).

- ``redis_server`` starts Debian's redis-server once per session (per xdist worker) on a free
  loopback port; ``redis`` flushes it before each test.
- ``db_url`` is a fresh SQLite file per test; tests marked ``db`` also run on PostgreSQL when
  ``TEST_POSTGRES_URL`` is set (``make test`` starts a throwaway cluster and sets it).
- ``fake_upstream`` is the deterministic OpenAI-compatible server from ``bench/``.
- ``app`` / ``client`` are in-process; ``live`` is real gunicorn gevent workers on loopback,
  shared by consecutive tests with the same ``live_overrides`` and reset between them
  (``tests.support.live``).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import sqlalchemy

from bench.fake_upstream import FakeUpstream
from tests.support.config import PASSWORD, TEST_HASHING, app_config
from tests.support.forkserver import close_fork_server
from tests.support.live import LiveCluster, LivePool, LiveServer, close_app
from tests.support.processes import RedisServer, start_redis, stop_redis
from tests.support.smollm2 import smollm2  # noqa: F401 (a fixture: the embedded model, once)
from tests.support.tokens import user_headers
from tests.support.waiting import fresh_day

LIVE_POOL = pytest.StashKey[LivePool]()


# Tests read today's usage, tokens per day and usage by day, all counted by UTC day: none starts
# in the last two minutes of one (no test takes that long), so none straddles midnight.
@pytest.fixture(autouse=True)
def _same_utc_day() -> None:
    fresh_day(120)


# --- Redis ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_redis(server)


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
    application.extensions["streamgate.redis.runs"].close()


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
        allowed = ["fake-model"] if models is None else models  # []: no allow-list
        tenant = Tenant(slug=slug, name=slug.title(), allowed_models=allowed, limits=limits)
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

    hasher = PasswordHasher(  # the apps' test profile: cheap
        time_cost=int(TEST_HASHING["PASSWORD_HASH_TIME_COST"]),
        memory_cost=int(TEST_HASHING["PASSWORD_HASH_MEMORY_KIB"]),
        parallelism=int(TEST_HASHING["PASSWORD_HASH_PARALLELISM"]),
    )
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
    """``Authorization`` headers for a user's fresh access token (current app context); a test
    module may import the function itself, ``tests.support.tokens.user_headers``."""
    return user_headers


# --- live gunicorn servers ---------------------------------------------------------------------


def _overrides_key(item: pytest.Item) -> tuple[int, str]:
    callspec = getattr(item, "callspec", None)
    overrides = callspec.params.get("live_overrides") if callspec is not None else None
    return (0, "") if overrides is None else (1, repr(sorted(dict(overrides).items())))


SLOW_MARKERS = ("live", "browser", "e2e", "cluster")  # modules that start servers
SERVER_FIXTURES = ("live", "live_cluster")  # and so do unmarked tests that use these

# The modules that take longest under `make test`, longest first: seconds per file (setup, call
# and teardown of its tests) summed from `--durations=0`, the mean of two runs on 2 cores with
# 4 workers (2026-12-03; docs examples and the chat page about 90 s each, the bench smoke 70 s,
# the last ones here about 20 s). Keep it roughly current when a module grows past 20 s: a
# module missing here only starts later, and the order changes nothing but the schedule.
LONG_MODULES = (
    "api/test_openapi_fuzz.py",  # 59 operations, ~45 s (it ran 1 of them before ids were unique)
    "docs/test_docs_examples.py",
    "browser/test_chat_page.py",
    "api/test_chat.py",
    "bench/test_bench_smoke.py",
    "api/test_limits_live.py",
    "browser/test_console.py",
    "e2e/test_upstreams_live.py",
    "api/test_chat_live.py",
    "streaming/test_hub_live.py",
    "auth/test_app_tokens.py",
    "auth/test_login.py",
    "hardening/test_faults.py",
    "auth/test_passwords.py",
    "api/test_admin_manage.py",
    "browser/test_chat_smollm2.py",
    "api/test_limits_admin.py",
    "auth/test_identity_service.py",
    "api/test_passthrough_live.py",
    "api/test_openapi.py",
    "streaming/test_hub_takeover_live.py",
    "hardening/test_attacks.py",
    "api/test_revoke_paths_live.py",
    "auth/test_login_storm_live.py",
    "e2e/test_smollm2.py",
)
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the run for sharing and for four xdist workers taking whole files.

    The longest modules start first (``LONG_MODULES``), then the other modules that start
    servers, then the in-process ones, each group by its number of tests, largest first: the
    run then ends on short modules on every worker instead of one worker finishing a long
    module alone. pytest-xdist hands out files in this order because ``--no-loadscope-reorder``
    (pyproject.toml) turns off its own order, by number of tests, which started one-test
    modules such as the bench smoke last. Within a module, tests parametrized with the same
    ``live_overrides`` run one after another (the others first), so they share one live server
    instead of alternating between two.
    """
    modules: dict[Path, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)

    def slow(path: Path) -> bool:
        return any(
            any(m.name in SLOW_MARKERS for m in it.iter_markers())
            or any(name in SERVER_FIXTURES for name in getattr(it, "fixturenames", ()))
            for it in modules[path]
        )

    def rank(path: Path) -> tuple[int, bool, int]:
        name = path.relative_to(TESTS_DIR).as_posix() if path.is_relative_to(TESTS_DIR) else ""
        listed = LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)
        return (listed, not slow(path), -len(modules[path]))

    ordered = sorted(modules, key=rank)  # stable: collection order among equals
    items[:] = [it for path in ordered for it in sorted(modules[path], key=_overrides_key)]
    _unique_node_ids(items)


def _unique_node_ids(items: list[pytest.Item]) -> None:
    """Give every test its own node id, and refuse to run when two share one.

    schemathesis 4.32 under pytest 9.2 gives each operation's test (``name`` ``test_x[GET /]``)
    the function's node id. pytest-xdist hands tests out by node id: it ran the first of the
    contract fuzz module's 59 and dropped the rest without a word. Each such test gets the id
    its name says (pytest 9.2 keeps it as a ``NodeId`` in ``_id``, earlier ones as a string in
    ``_nodeid``); a collision left after that stops the run rather than skipping tests silently.
    """
    for item in items:
        head, sep, _ = item.nodeid.rpartition("::")
        if sep and "[" in item.name and not item.nodeid.endswith("::" + item.name):
            fixed = f"{head}::{item.name}"
            node: Any = item
            if hasattr(node, "_id"):
                node._id = type(node._id).parse(fixed)
            else:
                node._nodeid = fixed
    seen: set[str] = set()
    for item in items:
        if item.nodeid in seen:
            raise pytest.UsageError(f"two tests share the node id {item.nodeid}")
        seen.add(item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


def pytest_sessionfinish() -> None:
    close_fork_server()  # after every fixture: the servers it started have been stopped


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    pool = config.stash.get(LIVE_POOL, None)
    if pool is not None and pool.started:
        terminalreporter.write_line(
            f"live servers: {pool.started} started, {len(pool.replaced)} replaced after a test"
        )
        for reason in pool.replaced:
            terminalreporter.write_line(f"  replaced: {reason}")


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    """Override in a test module to pass extra environment to the live server."""
    return {}


@pytest.fixture(scope="session")
def live_pool(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    _upstream_server: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LivePool]:
    pool = LivePool(
        redis_server, _upstream_server.base_url, lambda: tmp_path_factory.mktemp("live")
    )
    request.config.stash[LIVE_POOL] = pool
    yield pool
    pool.close()


@pytest.fixture()
def live_cluster(
    request: pytest.FixtureRequest,
    redis: redis_lib.Redis,
    fake_upstream: FakeUpstream,
    live_pool: LivePool,
    live_overrides: dict[str, str],
) -> Iterator[LiveCluster]:
    """The live server(s) for ``live_overrides``: reused, or started; checked idle afterwards."""
    fresh = request.node.get_closest_marker("fresh_live_server") is not None
    cluster = live_pool.get(live_overrides, redis, fresh=fresh)
    yield cluster
    problem = cluster.wait_idle(redis, lambda: int(fake_upstream.snapshot()["active"]))
    if problem is None and request.node.stash.get(_CALL_FAILED, False):
        problem = "the test failed"
    if problem is not None:
        live_pool.discard(f"{request.node.nodeid}: {problem}")


@pytest.fixture()
def live(live_cluster: LiveCluster) -> Iterator[LiveServer]:
    """Real gunicorn gevent workers on loopback, sharing Redis and SQLite with ``live.app``.

    The server may have served earlier tests: its tables are emptied and Redis flushed first.
    """
    application = live_cluster.make_app()
    try:
        live_cluster.empty_tables(application)
        with application.app_context():
            yield live_cluster.server(application)
    finally:
        close_app(application)
