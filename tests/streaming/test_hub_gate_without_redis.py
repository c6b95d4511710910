"""The hub's gate without Redis: what needs no Redis answers without it, and fast.

The app's Redis points at a closed port. A malformed channel (or ``Last-Event-ID``) is a 400
decided on the name alone, not a 503. These tests start no background services (the dispatcher
would spend its five-second start-up wait on the closed port, per test: 54 tests, six minutes of
the suite); only the control case, which must reach Redis, starts them.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.streaming.test_hub_access import GOOD_STREAM, MALFORMED
from tests.support.accounts import member_headers
from tests.support.processes import free_port

headers = pytest.fixture(member_headers, name="headers")


class TestWithoutRedis:
    """The app's Redis is unreachable: only what needs no Redis can answer."""

    @pytest.fixture()
    def app_overrides(self) -> dict[str, Any]:
        return {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there

    @pytest.mark.parametrize("channel", MALFORMED)
    def test_malformed_channel_is_400_without_touching_redis(
        self,
        client: Any,
        headers: dict[str, str],
        channel: str,
    ) -> None:
        response = client.get("/v1/events", query_string={"channel": channel}, headers=headers)
        assert response.status_code == 400, response.get_data(as_text=True)
        body = response.get_json()
        assert body["code"] == 400 and body["error_code"] == "invalid_channel"
        assert "channel" in body["errors"]

    def test_missing_channel_and_no_token_is_still_400(self, client: Any) -> None:
        response = client.get("/v1/events")
        assert response.status_code == 400
        assert response.get_json()["error_code"] == "invalid_channel"

    @pytest.mark.parametrize(
        "last",
        [
            "abc",
            "1-",
            "-1",
            "1-2-3",
            "1 -2",
            "1-2\n",
            "0x1-2",
            "1" * 30 + "-0",
            # Well-shaped but past Redis's 64-bit ids: the client's fault, never a 503.
            str(2**64) + "-0",
            "0-" + str(2**64),
            "9" * 20 + "-0",
        ],
    )
    def test_malformed_last_event_id_is_400_without_touching_redis(
        self,
        client: Any,
        headers: dict[str, str],
        last: str,
    ) -> None:
        by_query = client.get(
            "/v1/events",
            query_string={"channel": GOOD_STREAM, "last_event_id": last},
            headers=headers,
        )
        assert by_query.status_code == 400
        assert by_query.get_json()["error_code"] == "invalid_last_event_id"
        if "\n" not in last:
            by_header = client.get(
                "/v1/events",
                query_string={"channel": GOOD_STREAM},
                headers={**headers, "Last-Event-ID": last},
            )
            assert by_header.status_code == 400

    @pytest.mark.usefixtures("app_services")
    def test_a_well_formed_channel_does_need_redis(
        self,
        client: Any,
        headers: dict[str, str],
    ) -> None:
        # The control: the same request with a valid name goes on to Redis, which is down.
        response = client.get("/v1/events", query_string={"channel": GOOD_STREAM}, headers=headers)
        assert response.status_code == 503
