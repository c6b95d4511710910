"""A Redis Cluster master killed (SIGKILL) in the middle of a soak, its replica promoted.

``make soak-cluster`` (CI runs it after ``make soak``): the soak of ``tests/soak`` (generations
read by their owners, followers cut at random and resumed with ``Last-Event-ID``), smaller and
bounded (``SOAK_CLUSTER_SECONDS``, default 30), on a local 6-node cluster with a 1 s node timeout.
Once half the generators are streaming, the master serving the tenant's limits slot is killed:
admissions, the live set's writes and the logs of its slots fail until its replica takes over.

Asserted afterwards, as a user would see it:
- every generation that got its 202 completed, and its owner read the whole text;
- every follower's reassembled text equals the stream's text, no event id twice;
- no 5xx but the documented ``503`` window (``limits_unavailable``, ``redis_unavailable``,
  ``hub_unavailable``, waited out and retried by the clients); how long after the kill the last
  refusal came is printed;
- nothing left: no live generation, lease or open subscription;
- revocation works again: a user revoked after the failover is refused at once, and the
  revocation state was re-seeded from SQL (the gateway saw the failover).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.soak.test_soak as soak_module
from tests.support.cluster import ClusterStack, leftovers
from tests.support.live import metric_sum
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.failover, pytest.mark.timeout(600)]

SECONDS = float(os.environ.get("SOAK_CLUSTER_SECONDS", "30"))
WINDOW_CODES = {"limits_unavailable", "redis_unavailable", "hub_unavailable"}


def kill_a_master_when_busy(stack: ClusterStack, generators: int, record: dict[str, Any]) -> None:
    """Once half the generators run, SIGKILL the master of the tenant's limits slot; note when
    its replica is promoted."""
    assert stack.local is not None
    redis = stack.redis_client()
    try:
        wait_until(lambda: redis.zcard("sg:live") >= generators // 2, timeout=60, interval=0.1)
        master = stack.local.master_of_key("sg:lim:{t:" + stack.tenant_id + "}")
        replica = stack.local.replica_of(master)
        record["killed_at"] = time.monotonic()
        stack.local.kill(master)
        wait_until(lambda: stack.local.roles().get(replica) == "master", timeout=30)
        record["promoted_after_s"] = round(time.monotonic() - record["killed_at"], 2)
        record["killed"], record["promoted"] = master, replica
    finally:
        redis.close()


def test_a_master_killed_mid_soak_loses_no_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {"SECONDS": SECONDS, "GENERATORS": 30, "SUBSCRIBERS": 120}.items():
        monkeypatch.setattr(soak_module, name, value)
    monkeypatch.setattr(soak_module, "TOKENS", 60)
    monkeypatch.setattr(soak_module, "DELAY_MS", 50)  # 3-second streams
    monkeypatch.setattr(soak_module, "REFUSALS", {"overloaded", *WINDOW_CODES})
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    monkeypatch.setenv("SSE_MAX_SUBSCRIPTIONS_PER_USER", "100000")
    monkeypatch.setenv("SSE_CONNECTS_PER_MINUTE", "1000000")
    monkeypatch.setenv("SSE_HEARTBEAT_S", "2")
    # A run rides out the failover (about 2 s here, plus the clients seeing the new topology).
    monkeypatch.setenv("REDIS_RETRY_S", "15")
    stack = ClusterStack(workers=2, workdir=tmp_path)  # logs kept with the test's, pruned by pytest
    record: dict[str, Any] = {}
    try:
        stack.start_redis()
        stack.start_upstream(tokens=60, delay_ms=50)
        stack.prepare_app()
        stack.start_gateway()
        killer = threading.Thread(
            target=kill_a_master_when_busy, args=(stack, 30, record), daemon=True
        )
        killer.start()
        tally = asyncio.run(soak_module.soak(stack))
        killer.join(30)
        assert "promoted" in record, record
        redis = stack.redis_client()
        nothing = {"live": 0, "leases": 0, "subscriptions": 0}
        # Cut connections are noticed at the next heartbeat write; leases of runs settled
        # during the window are released by their runners or, at worst, the reaper.
        left = leftovers(redis)
        deadline = time.monotonic() + 30
        while left != nothing and time.monotonic() < deadline:
            time.sleep(0.5)
            left = leftovers(redis)
        window = [t - record["killed_at"] for t in tally.refused_at if t >= record["killed_at"]]
        summary = {
            "seconds": SECONDS,
            "streams_started": tally.streams_started,
            "streams_completed": tally.streams_completed,
            "subscriptions_followed": tally.followed,
            "resumes": tally.resumes,
            "owner_reconnects": tally.owner_reconnects,
            "statuses": tally.statuses,
            "refused": tally.refused,
            "killed_master": record["killed"],
            "replica_promoted_after_s": record["promoted_after_s"],
            "refusals_after_kill_until_s": round(max(window), 2) if window else 0.0,
            # Entries the workers' log writers appended again because the failover lost them.
            "log_entries_reappended": metric_sum(stack.gateway_url, "streamgate_log_repairs_total"),
            "leftovers": left,
        }
        print("soak-cluster:", json.dumps(summary))
        assert not [code for code in tally.statuses if code >= 500], summary
        assert tally.stream_failures == [], tally.stream_failures[:10]
        assert tally.mismatches == [], tally.mismatches[:10]
        assert tally.streams_completed == tally.streams_started > 30, summary
        assert left == nothing, left
        assert_revocation_works(stack)
        log = (stack.workdir / "gateway.log").read_text(errors="replace")
        assert "Redis failover seen" in log and "re-seeding revocations" in log
    finally:
        stack.close()


def assert_revocation_works(stack: ClusterStack) -> None:
    """After the failover: a revoked user's token is refused on the next request."""
    member, admin = stack.users("member", 1)[0], stack.users("admin", 1)[0]
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        assert client.get("/v1/auth/me", headers=member.headers).status_code == 200
        revoked = client.post(
            f"/v1/admin/users/{member.id}/revoke",
            json={"reason": "after failover"},
            headers=admin.headers,
        )
        assert revoked.status_code == 202, revoked.text
        assert client.get("/v1/auth/me", headers=member.headers).status_code == 401
