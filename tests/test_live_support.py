"""The live-server harness cleans up after itself, even after a server was killed outright."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.live import LiveCluster
from tests.support.processes import RedisServer

pytestmark = pytest.mark.live


def test_a_killed_live_server_left_its_metric_files_in_the_tests_own_directory(
    tmp_path: Path, redis_server: RedisServer, fake_upstream: FakeUpstream
) -> None:
    cluster = LiveCluster((), redis_server, fake_upstream.base_url, directory=tmp_path)
    cluster.kill()  # no graceful exit: gunicorn's on_exit never runs
    # Each worker wrote its metric files (the master's directory of them) beside the log.
    assert list((tmp_path / "gunicorn-0-metrics").glob("*.db"))
