"""The processes a benchmark run starts, owns and stops: Redis, fake upstream, Streamgate, peer.

Every process is started here with ``subprocess.Popen`` and ended by its own PID (SIGTERM, then
SIGKILL of the PIDs it had spawned) when the run ends, however it ends. All listen on loopback only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import procstat

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "bench-secret-" + "b" * 40  # a loopback-only throwaway; never used outside a run
HIGH_LIMITS = {"rpm": 1_000_000, "concurrent": 100_000, "tpm": 10**9, "tpd": 10**10}
NO_LOGIN = "!bench-user-no-password"  # not an argon2 hash: these users cannot log in


def gunicorn_argv(port: int, workers: int) -> list[str]:
    """The gunicorn command line of the gateway (the project's gunicorn.conf.py) on ``port``."""
    return [
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
    ]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_argv(port: int, workdir: str | Path, *extra: str) -> list[str]:
    """Debian's redis-server in the foreground on loopback, persistence off; ``extra`` last wins."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
        *extra,
    ]


def wait_for_redis(port: int, timeout: float = 10.0) -> None:
    """Return once the redis-server on ``port`` answers PING; RuntimeError after ``timeout``."""
    import redis as redis_lib

    probe = redis_lib.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if probe.ping():
                    return
            except redis_lib.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not answer within {timeout}s")
            time.sleep(0.05)
    finally:
        probe.close()


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's open-file limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (wanted, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), max(hard, target)))
            return max(soft, target)
        except (ValueError, OSError):
            continue
    return soft


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the run is killed outright (SIGKILL, OOM).

    Linux sends it when the spawning *thread* ends, so every process is spawned from the main
    thread.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_http(
    url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode}\n{tail}")
        try:
            if httpx.get(url, timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout}s")


@dataclass
class Proc:
    """A process this run started, with the PIDs of everything it spawned."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    known: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and its live descendants (remembered so a stop can reach stragglers)."""
        found = procstat.tree(self.pid)
        self.known.update(found)
        return found

    def stop(self, timeout: float = 15) -> None:
        self.pids()
        if self.popen.poll() is None:
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        deadline = time.monotonic() + 5
        for pid in sorted(self.known - {self.pid}):
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
            if os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@dataclass
class BenchUser:
    id: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token}


def loopback(port: int, scheme: str = "http", path: str = "") -> str:
    """The URL of a service this machine runs on ``port`` (loopback)."""
    return f"{scheme}://127.0.0.1:{port}{path}"


class Stack:
    """Redis + fake upstream + Streamgate under gunicorn (+ the peer), all on loopback."""

    def __init__(
        self,
        *,
        workers: int = 2,
        workdir: Path | None = None,
        log_level: str = "WARNING",
        db_dir: Path | None = None,
    ) -> None:
        self.workers = workers
        self.log_level = log_level
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sg-bench-"))
        self.db_dir = db_dir or self.workdir
        self.procs: list[Proc] = []
        self.redis_port = 0
        self.upstream_port = 0
        self.gateway_port = 0
        self.gateway: Proc | None = None
        self.upstream: Proc | None = None
        self.redis: Proc | None = None
        self.app: Any = None
        self._ctx: Any = None
        self.tenant_id = ""
        self._users: dict[str, list[BenchUser]] = {"member": [], "admin": []}
        self.fd_limit = raise_fd_limit()

    # --- urls -----------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return loopback(self.redis_port, "redis", "/0")

    @property
    def upstream_root(self) -> str:
        """The fake upstream's own routes (``/_stats``, ``/_stamps``) are here."""
        return loopback(self.upstream_port)

    @property
    def upstream_url(self) -> str:
        return self.upstream_root + "/v1"

    @property
    def gateway_url(self) -> str:
        return loopback(self.gateway_port)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_dir / f'bench-{self.workdir.name}.db'}"

    # --- processes ------------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                argv,
                cwd=cwd or ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        proc = Proc(name, popen, log, stop_signal)
        self.procs.append(proc)
        return proc

    def start_redis(self) -> None:
        self.redis_port = free_port()
        self.redis = self._spawn(
            "redis", redis_argv(self.redis_port, self.workdir, "--maxclients", "50000")
        )
        wait_for_redis(self.redis_port)

    def start_backends(self, tokens: int = 200, delay_ms: float = 20.0) -> None:
        """Redis, the fake model server and the app's database: everything but the gateway."""
        self.start_redis()
        self.start_upstream(tokens, delay_ms)
        self.prepare_app()

    def start_upstream(self, tokens: int = 200, delay_ms: float = 20.0) -> None:
        self.upstream_port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.upstream = self._spawn(
            "upstream",
            [
                sys.executable,
                "-m",
                "bench.fake_upstream",
                "--port",
                str(self.upstream_port),
                "--tokens",
                str(tokens),
                "--delay-ms",
                str(delay_ms),
            ],
            env=env,
        )
        wait_http(self.upstream_url + "/models", self.upstream.popen, 20, self.upstream.log)

    def gateway_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
        env.update(
            JWT_SECRET_KEY=JWT_SECRET,
            DATABASE_URL=self.db_url,
            REDIS_URL=self.redis_url,
            LLM_BASE_URL=self.upstream_url,
            LLM_MODELS="fake-model",
            JWT_COOKIE_SECURE="false",
            LOG_LEVEL=self.log_level,
            PYTHONPATH=str(ROOT),
            WEB_CONCURRENCY=str(self.workers),
            JWT_ACCESS_TTL_S="86400",
            # Defaults for accounts without their own limits; bench accounts carry their own too.
            LIMIT_USER_RPM="1000000",
            LIMIT_USER_CONCURRENT="100000",
            LIMIT_USER_TPM=str(10**9),
            LIMIT_USER_TPD=str(10**10),
            LIMIT_TENANT_RPM="1000000",
            LIMIT_TENANT_CONCURRENT="100000",
            LIMIT_TENANT_TPM=str(10**9),
            LIMIT_TENANT_TPD=str(10**10),
        )
        env.pop("GUNICORN_CMD_ARGS", None)
        return env

    def prepare_app(self) -> None:
        """Create the schema and a tenant in the SQLite file the gateway will use."""
        from api import create_app
        from auth.models import Tenant
        from core.store import db

        self.app = create_app(
            {
                "TESTING": True,
                "JWT_SECRET_KEY": JWT_SECRET,
                "DATABASE_URL": self.db_url,
                "REDIS_URL": self.redis_url,
                "LLM_BASE_URL": self.upstream_url,
                "LLM_MODELS": ["fake-model"],
                "JWT_ACCESS_TTL_S": 86400,
                "LOG_LEVEL": "WARNING",
            }
        )
        self._ctx = self.app.app_context()
        self._ctx.push()
        db.create_all()
        tenant = Tenant(
            slug="bench-" + secrets.token_hex(3),
            name="Bench",
            allowed_models=["fake-model"],
            limits=dict(HIGH_LIMITS),
        )
        db.session.add(tenant)
        db.session.commit()
        self.tenant_id = tenant.id

    def routes(self) -> set[tuple[str, str]]:
        """(method, rule) of every route of the app under test."""
        return {(m, r.rule) for r in self.app.url_map.iter_rules() for m in (r.methods or ())}

    def has_route(self, method: str, rule_prefix: str, suffix: str = "") -> bool:
        return any(
            m == method and r.startswith(rule_prefix) and r.endswith(suffix)
            for m, r in self.routes()
        )

    def users(self, role: str, count: int) -> list[BenchUser]:
        """``count`` distinct users of ``role``, high limits, a day-long access token each."""
        from auth.models import User
        from auth.tokens import issue_user_tokens
        from core.store import db

        have = self._users[role]
        if len(have) < count:
            fresh = [
                User(
                    tenant_id=self.tenant_id,
                    email=f"{role}-{i}-{secrets.token_hex(3)}@bench.invalid",
                    password_hash=NO_LOGIN,
                    role=role,
                    limits=dict(HIGH_LIMITS),
                )
                for i in range(len(have), count)
            ]
            db.session.add_all(fresh)
            db.session.commit()
            for user in fresh:
                token = issue_user_tokens(user_id=user.id, tenant_id=user.tenant_id, role=role)[
                    "access_token"
                ]
                have.append(BenchUser(user.id, role, token))
        return have[:count]

    def start_gateway(self) -> None:
        self.gateway_port = free_port()
        self.gateway = self._spawn(
            "gateway",
            gunicorn_argv(self.gateway_port, self.workers),
            env=self.gateway_env(),
            stop_signal=signal.SIGINT,
        )  # SIGINT: gunicorn's quick shutdown
        wait_http(self.gateway_url + "/healthz", self.gateway.popen, 60, self.gateway.log)
        deadline = time.monotonic() + 30
        while len(self.worker_pids()) < self.workers and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart_gateway(self) -> None:
        """Fresh workers (same database, Redis and tokens): memory measured from a clean heap."""
        if self.gateway is not None:
            self.gateway.stop()
            self.procs.remove(self.gateway)
        self.start_gateway()

    def worker_pids(self) -> list[int]:
        assert self.gateway is not None
        return procstat.children(self.gateway.pid)

    def gateway_pids(self) -> list[int]:
        assert self.gateway is not None
        return self.gateway.pids()

    def redis_cap_per_worker(self) -> int:
        """The most Redis connections one gateway worker can open, whatever its load: its two
        pools (``REDIS_POOL_SIZE``, ``REDIS_RUNS_POOL_SIZE``) and its own two connections (the
        hub's pub/sub reader and the log writer's)."""
        from api.config import variable

        env = self.gateway_env()

        def size(name: str) -> int:
            return int(env.get(name) or str(variable(name).default))

        return size("REDIS_POOL_SIZE") + size("REDIS_RUNS_POOL_SIZE") + 2

    def redis_client(self) -> Any:
        import redis as redis_lib

        return redis_lib.Redis(port=self.redis_port, decode_responses=True)

    def remove_db(self) -> None:
        """Delete the SQLite files when they live outside the work dir."""
        if self.db_dir != self.workdir:
            for path in self.db_dir.glob(f"bench-{self.workdir.name}.db*"):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._ctx is not None:
            from core.store import db

            with contextlib.suppress(Exception):
                db.session.remove()
                db.engine.dispose()
            with contextlib.suppress(Exception):
                self.app.extensions["streamgate.redis"].close()
            with contextlib.suppress(Exception):
                self._ctx.pop()
            self._ctx = None
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
