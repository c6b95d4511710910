"""Start the tests' gunicorn servers from a process that has already imported the app.

A live test server is the project's own command line (``bench.stack.gunicorn_argv``), but most of
what a start costs is each worker importing openai, langchain, pydantic, SQLAlchemy and Flask
again: about 3 s of CPU per worker, some 50 starts per run. The fork server pays it once per test
process:

- ``python -m tests.support.forkserver`` patches with gevent (what the gevent worker does first),
  imports gunicorn and every module of ``api``, ``auth``, ``core`` and ``streaming``, then waits on
  its stdin;
- each request (one JSON line: argv, environment, working directory, log file) is a ``fork()``:
  the child replaces its environment, points stdout and stderr at the log and runs gunicorn's own
  entry point with the request's arguments; the reply is the child's PID;
- the server reaps its children and writes each one's exit status to a file, which
  ``ForkedProcess`` (what ``start_gunicorn`` returns: ``pid``, ``poll``, ``wait``,
  ``send_signal``, like ``subprocess.Popen``) reads.

What changes against a plain start: the master, too, runs gevent-patched (as with a gunicorn
config that patches, a supported setup), and the app's modules are imported before the workers
fork (as with ``--preload``); each worker still builds its app from its own environment after the
fork. Nothing is imported that reads the environment at import time except prometheus-client
(whether multiprocess mode is on), which the server turns on before importing, as
``gunicorn.conf.py`` does. The bench and the soaks start gunicorn as a user does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

PACKAGES = ("api", "auth", "core", "streaming")


class ForkedProcess:
    """A process the fork server started: the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, pid: int, args: list[str], status_dir: Path) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._status = status_dir / str(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                self.returncode = int(self._status.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The client side: one server process per test process, started on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.status_dir = Path(tempfile.mkdtemp(prefix="sg-forkserver-"))

    def _start(self) -> subprocess.Popen[bytes]:
        from tests.support.config import ROOT

        self.status_dir.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.forkserver", str(self.status_dir)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            proc.kill()
            proc.wait()
            raise RuntimeError("the fork server did not start (see the test's stderr)")
        return proc

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> ForkedProcess:
        """Start ``argv`` (``python -m gunicorn ...``) as a child of the server; its process.

        Its workers' metric files go beside ``log``, in the test's own directory: left to itself,
        ``gunicorn.conf.py`` makes a directory in /tmp that only a graceful exit removes (a
        server killed at once, or one refused at start-up, left it there).
        """
        env = {"PROMETHEUS_MULTIPROC_DIR": str(log.with_name(log.stem + "-metrics")), **env}
        request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log)}
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            pid = int(self._proc.stdout.readline())
        return ForkedProcess(pid, argv, self.status_dir)

    def close(self, timeout: float = 60) -> None:
        """Stop the server once its children have ended (it waits for them to reap them)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.status_dir, ignore_errors=True)


_SERVER: ForkServer | None = None


def fork_server() -> ForkServer:
    """This test process's fork server (started on the first spawn)."""
    global _SERVER
    if _SERVER is None:
        _SERVER = ForkServer()
    return _SERVER


def close_fork_server() -> None:
    if _SERVER is not None:
        _SERVER.close()


# --- the server process ---------------------------------------------------------------------------


def _import_everything() -> None:
    import importlib
    import pkgutil

    import gunicorn.app.wsgiapp  # noqa: F401
    import gunicorn.workers.ggevent  # noqa: F401

    for name in PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, name + "."):
            importlib.import_module(module.name)


def _child(request: dict[str, Any], stdin_fd: int, stdout_fd: int) -> None:
    """In the forked child: become ``python -m gunicorn <args>`` with the request's environment."""
    import gevent
    from gevent import monkey

    code = 1
    try:
        gevent.reinit()
        monkey.get_original("signal", "signal")(signal.SIGCHLD, signal.SIG_DFL)
        os.close(stdin_fd)
        os.close(stdout_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        assert argv[1:3] == ["-m", "gunicorn"], argv
        sys.argv = ["gunicorn", *argv[3:]]
        from gunicorn.app.wsgiapp import run

        try:
            run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(status_dir: Path) -> None:
    # As gunicorn.conf.py does before a worker imports prometheus-client: multiprocess mode is
    # chosen at import time. Nothing is written here; each server's own directory is set in its
    # environment after the fork.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(status_dir))
    from gevent import monkey

    monkey.patch_all()
    fork = monkey.get_original("os", "fork")
    waitpid = monkey.get_original("os", "waitpid")
    set_handler = monkey.get_original("signal", "signal")
    children: set[int] = set()

    def reap(*_: Any) -> None:
        while True:
            try:
                pid, status = waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            tmp = status_dir / f".{pid}"
            tmp.write_text(str(code))
            tmp.rename(status_dir / str(pid))

    set_handler(signal.SIGCHLD, reap)
    _import_everything()
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    out: IO[bytes] = os.fdopen(os.dup(stdout_fd), "wb", buffering=0)
    out.write(b"ready\n")
    lines = os.fdopen(os.dup(stdin_fd), "rb")
    for line in lines:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        # SIGCHLD waits until the PID is known: a child that dies at once is reaped after this.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = fork()
        if pid == 0:
            lines.close()
            out.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _child(request, stdin_fd, stdout_fd)
        children.add(pid)
        (status_dir / str(pid)).unlink(missing_ok=True)  # a reused PID's old status
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        out.write(f"{pid}\n".encode())
    # stdin closed: the test process is done; reap what is still running, then go.
    deadline = time.monotonic() + 60
    while children and time.monotonic() < deadline:
        time.sleep(0.05)
        reap()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
