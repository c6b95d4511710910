"""A throwaway PostgreSQL cluster for the test suite, on a free loopback port under a temp dir.

    python -m scripts.pg_test_cluster start DIR   # initdb + postgres; prints the SQLAlchemy URL
    python -m scripts.pg_test_cluster stop DIR    # stops it by the PID recorded in DIR, removes DIR

``make test`` runs ``start`` with a fresh ``mktemp -d`` directory, exports the printed URL as
``TEST_POSTGRES_URL`` and runs ``stop`` from a shell trap, so the cluster goes away however the
tests end. PostgreSQL refuses to run as root, so as root the cluster is created and run as the
``postgres`` user (Debian's postgresql package creates it). Durability is switched off: the data
lives for one test run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

STATE = "cluster.json"


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the URL."""
    print(message, file=sys.stderr, flush=True)


def server_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (newest Debian version, else PATH)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunAs(TypedDict, total=False):
    """Popen's arguments that run a child as another user."""

    user: int
    group: int
    extra_groups: list[int]


def run_as() -> RunAs:
    """Popen arguments that drop root to the ``postgres`` user (no-op for other users)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise SystemExit("running as root, but no `postgres` user to run the cluster as") from exc
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for entry in path.rglob("*"):
        os.chown(entry, uid, gid, follow_symlinks=False)


def wait_ready(url: str, proc: subprocess.Popen[bytes], logfile: Path, timeout: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            output = logfile.read_text(errors="replace")
            raise SystemExit("postgres exited during start-up:\n" + output)
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"postgres not ready within {timeout}s:\n" + logfile.read_text(errors="replace")
                ) from None
            time.sleep(0.1)


# Servers started in-process (fault tests) outlive their Popen on purpose; keeping the objects
# here stops Python from warning that a child it forgot about is still running.
_DETACHED: list[subprocess.Popen[bytes]] = []


def _launch(
    bindir: Path, data: Path, sockets: Path, logfile: Path, port: int, drop: RunAs
) -> subprocess.Popen[bytes]:
    """Run ``postgres`` on ``data`` in the background, listening on loopback ``port``."""
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; `stop` ends it by PID
            **drop,
        )
    _DETACHED.append(proc)
    return proc


def start(directory: Path) -> str:
    """Create and start the cluster; return its SQLAlchemy URL."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    bindir = server_bindir()
    drop = run_as()
    password = secrets.token_urlsafe(18)
    data, sockets, logfile = directory / "data", directory / "sockets", directory / "postgres.log"
    sockets.mkdir(exist_ok=True)
    pwfile = directory / "pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    logfile.touch()
    if drop:
        chown_tree(directory, drop["user"], drop["group"])

    log(f"==> initdb {data}")
    subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            f"--pwfile={pwfile}",
            "--no-sync",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **drop,
    )
    pwfile.unlink()
    port = free_port()
    proc = _launch(bindir, data, sockets, logfile, port, drop)
    url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    state = {"pid": proc.pid, "port": port, "data": str(data), "url": url}
    (directory / STATE).write_text(json.dumps(state))
    try:
        wait_ready(url, proc, logfile)
    except BaseException:
        stop(directory)
        raise
    log(f"==> PostgreSQL ready on 127.0.0.1:{port} (pid {proc.pid})")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has already exited


def _is_our_postgres(pid: int, data: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return data.encode() in cmdline


def _stop_server(directory: Path, kill: bool = False) -> int:
    """Stop the recorded server ("fast" shutdown: clients disconnected); returns its PID."""
    state = json.loads((directory / STATE).read_text())
    pid, data = int(state["pid"]), str(state["data"])
    if _alive(pid) and _is_our_postgres(pid, data):
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if kill and _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for proc in [p for p in _DETACHED if p.pid == pid]:  # started by this process: reap it
        proc.wait(10)
        _DETACHED.remove(proc)
    return pid


def stop(directory: Path) -> None:
    """Stop the cluster by the PID recorded in ``directory`` and remove the directory."""
    directory = directory.resolve()
    if (directory / STATE).exists():
        pid = _stop_server(directory, kill=True)
        log(f"==> PostgreSQL (pid {pid}) stopped")
    if directory.exists() and directory != Path("/"):
        shutil.rmtree(directory, ignore_errors=True)


def pause(directory: Path) -> None:
    """Stop the server but keep its data: the database is "unavailable" (fault tests)."""
    _stop_server(directory.resolve(), kill=True)


def resume(directory: Path) -> None:
    """Start a paused cluster again on the same port and data."""
    directory = directory.resolve()
    state = json.loads((directory / STATE).read_text())
    data, port = Path(state["data"]), int(state["port"])
    sockets, logfile = directory / "sockets", directory / "postgres.log"
    proc = _launch(server_bindir(), data, sockets, logfile, port, run_as())
    state["pid"] = proc.pid
    (directory / STATE).write_text(json.dumps(state))
    wait_ready(state["url"], proc, logfile)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Throwaway PostgreSQL cluster for tests.")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("directory", type=Path, help="a fresh directory of its own (mktemp -d)")
    args = parser.parse_args(argv)
    if args.action == "start":
        print(start(args.directory), flush=True)
    else:
        stop(args.directory)


if __name__ == "__main__":
    main()
