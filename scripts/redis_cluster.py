"""A local Redis Cluster: 6 of Debian's ``redis-server`` (3 masters, 3 replicas) on loopback.

    python -m scripts.redis_cluster      # `make cluster`: start, print REDIS_URL, Ctrl-C stops

Each node runs in the foreground under a temporary directory of its own (``--cluster-enabled
yes``, persistence off), on a free port whose cluster-bus port (+10000) is free too;
``redis-cli --cluster create ... --cluster-replicas 1`` joins them. ``start_cluster`` returns once
every node says ``cluster_state:ok`` with all 16384 slots covered and every replica's link to its
master is up (so a failover has a replica to promote). Nodes are stopped by their PID. The tests
(``tests/support/cluster.py``) use the same functions.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

HOST = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000  # Redis Cluster's node-to-node bus listens on port + 10000


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def cluster_ports(count: int) -> list[int]:
    """``count`` free loopback ports whose bus ports are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET < 65536 and port not in ports and _port_free(port + BUS_OFFSET):
            ports.append(port)
    return ports


@dataclass
class LocalCluster:
    """The nodes of a local cluster, by port; ``procs`` are the redis-server processes."""

    workdir: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        return sorted(self.procs)

    @property
    def url(self) -> str:
        """A seed URL (any node serves as the seed)."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (close it when done)."""
        return redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5)

    def alive(self) -> list[int]:
        return [port for port, proc in sorted(self.procs.items()) if proc.poll() is None]

    def roles(self) -> dict[int, str]:
        """``port -> "master" | "slave"`` of every running node, as each says itself."""
        out = {}
        for port in self.alive():
            client = self.node(port)
            try:
                out[port] = str(client.info("replication")["role"])
            except redis.RedisError:
                continue
            finally:
                client.close()
        return out

    def master_of_key(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now."""
        client = self.node(self.alive()[0])
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        finally:
            client.close()
        raise LookupError(f"no master serves {key!r}")

    def replica_of(self, master_port: int) -> int:
        """The port of ``master_port``'s replica."""
        client = self.node(master_port)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return int(info["slave0"]["port"])

    def healthy(self) -> bool:
        """Every running node sees the cluster ok, all slots served, every master replicated."""
        masters = 0
        for port in self.alive():
            client = self.node(port)
            try:
                info = client.cluster("info")
                replication = client.info("replication")
            except redis.RedisError:
                return False
            finally:
                client.close()
            if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
                return False
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
            masters += replication["role"] == "master"
        return masters == 3 and len(self.alive()) == 6

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown, no last write to its replica)."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def pause(self, port: int, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT) one node: a replica paused this way misses its master's writes."""
        self.procs[port].send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self) -> None:
        """Stop every node by its PID and remove the working directory."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused node must be able to exit
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: apt-get install redis-server redis-tools")
    return found


def start_cluster(node_timeout_ms: int = 1500, timeout_s: float = 60.0) -> LocalCluster:
    """Start 6 nodes, create the cluster (one replica per master) and wait until it is whole."""
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="sg-cluster-")))
    try:
        for port in cluster_ports(6):
            workdir = cluster.workdir / str(port)
            workdir.mkdir()
            argv = [
                _binary("redis-server"),
                "--port", str(port),
                "--bind", HOST,
                "--dir", str(workdir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--maxclients", "20000",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
            ]  # fmt: skip
            log = (workdir / "redis.log").open("ab")
            cluster.procs[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            log.close()
        _wait(lambda: all(_pings(port) for port in cluster.ports), timeout_s, "nodes up")
        create = [_binary("redis-cli"), "--cluster", "create"]
        create += [f"{HOST}:{port}" for port in cluster.ports]
        create += ["--cluster-replicas", "1", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        _wait(cluster.healthy, timeout_s, "cluster ok")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _pings(port: int) -> bool:
    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"local Redis Cluster: {what} not reached within {timeout_s}s")
        time.sleep(0.1)


def main() -> None:
    cluster = start_cluster()
    print(f"Redis Cluster up: REDIS_CLUSTER=true REDIS_URL={cluster.url}", flush=True)
    for port, role in sorted(cluster.roles().items()):
        print(f"  {HOST}:{port} {role} (pid {cluster.procs[port].pid})", flush=True)
    print("Ctrl-C stops every node.", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        main()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
