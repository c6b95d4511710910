"""A revocation lost to asynchronous replication comes back from SQL after the failover.

The replica of the master that serves a user's revocation key is paused (SIGSTOP) and its
replication link cut, so that it cannot receive the next write; the user is revoked (SQL, then
Redis: the master acknowledges); the master is killed and the paused replica resumed and
promoted, without the write. Redis now says the token is fine. The keeper's failover check sees
the topology epoch move and re-seeds the revocations from SQL: the token is refused again. Its
own cluster (a node is lost for good).
"""

from __future__ import annotations

from typing import Any

import pytest

from scripts.redis_cluster import LocalCluster
from tests.support.tokens import claims_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster


def test_a_revocation_lost_in_a_failover_is_restored_from_sql(
    cluster: LocalCluster, cluster_app: Any, make_user: Any
) -> None:
    from auth import revocations
    from auth.tokens import issue_user_tokens
    from core.store import db, utcnow

    user = make_user()
    tokens = issue_user_tokens(user_id=user.id, tenant_id=user.tenant_id, role=user.role)
    claims = claims_of(tokens["access_token"])
    assert not revocations.is_revoked(claims)  # seeds Redis from SQL
    revocations.reseed_after_failover()  # note the epoch as it is now
    assert not revocations.reseed_after_failover()

    key = "sg:rv:user:" + user.id
    master = cluster.master_of_key(key)
    replica = cluster.replica_of(master)
    cluster.pause(replica)
    primary = cluster.node(master)
    try:
        # Its replication link cut too: a paused process's socket would still buffer the write.
        primary.client_kill_filter(_type="replica")
        user.tokens_valid_after = utcnow()  # SQL first, as every revocation
        db.session.commit()
        revocations.revoke_user_tokens(user.id)  # acknowledged by the master only
        assert revocations.is_revoked(claims)
        cluster.kill(master)
    finally:
        primary.close()
        cluster.pause(replica, paused=False)
    wait_until(lambda: cluster.roles().get(replica) == "master", timeout=30)
    node = cluster.node(replica)
    try:
        assert node.get(key) is None  # the write is lost: Redis alone would let the token in
    finally:
        node.close()

    def refused_again() -> bool:
        try:
            revocations.reseed_after_failover()  # what every worker's keeper asks each tick
            return revocations.is_revoked(claims)
        except Exception:  # noqa: BLE001 - the cluster is still settling on its new master
            return False

    wait_until(refused_again, timeout=30, interval=0.2)
