"""Resuming a stream that is ending: the answer depends on what the client has, not on a race.

A run is marked ended in its live state before its terminal event is written to the log (so a
client that sees the end finds its lease already released). A resume that lands in between must
still deliver the terminal event; 204 ("you have everything") is only for a client whose last id
is the terminal entry itself. The soak found this: one resume in ~4,800 was answered 204 while
``stream.completed`` was being written, and that reader never saw its stream end.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from streaming.log import EventLog, event_log, log_key
from tests.support.accounts import member_headers
from tests.support.hub import open_hub, say_hi

# The hub needs this process's dispatcher (post_worker_init's).
pytestmark = pytest.mark.usefixtures("app_services")

headers = pytest.fixture(member_headers, name="headers")


def _finished_stream(
    client: Any, headers: dict[str, str], fake_upstream: Any
) -> tuple[str, list[Any]]:
    created = say_hi(client, headers, fake_upstream)
    reader = open_hub(client, created["channel"], headers)
    try:
        events = reader.read()
    finally:
        reader.close()
    assert reader.eof and events[-1].event == "stream.completed"
    return created["channel"], events


def test_a_resume_while_the_terminal_event_is_being_written_gets_it(
    app: Any,
    client: Any,
    headers: dict[str, str],
    fake_upstream: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel, events = _finished_stream(client, headers, fake_upstream)
    terminal = events[-1]
    log = event_log(app)
    # Back to the moment between "marked ended" and "terminal written": the live state already
    # says completed, the log ends with the last token.
    app.extensions["streamgate.redis"].xdel(log_key(channel), terminal.id)
    assert (log.last_entry(channel) or ("", ""))[1] != "stream.completed"

    first_page = EventLog.first_page
    writes: list[str] = []

    def replay_then_runner_writes(self: EventLog, ch: str, after: str | None, count: int) -> Any:
        read = first_page(self, ch, after, count)
        if ch == channel and not writes:  # the runner's sink lands its terminal event now
            writes.append(log.append(channel, terminal.event, json.dumps(terminal.data), 60))
        return read

    monkeypatch.setattr(EventLog, "first_page", replay_then_runner_writes)
    reader = open_hub(client, channel, {**headers, "Last-Event-ID": events[-2].id})
    try:
        assert reader.status == 200, reader.response.get_data(as_text=True)
        got = reader.read()
    finally:
        reader.close()
    assert writes and reader.eof
    assert [e.event for e in got] == ["stream.completed"]
    assert got[0].id == writes[0] and got[0].data == terminal.data


def test_a_resume_after_the_terminal_event_is_told_to_stop(
    client: Any,
    headers: dict[str, str],
    fake_upstream: Any,
) -> None:
    channel, events = _finished_stream(client, headers, fake_upstream)
    done = client.get(
        "/v1/events",
        query_string={"channel": channel},
        headers={**headers, "Last-Event-ID": events[-1].id},
    )
    assert done.status_code == 204
    # One before the end still gets the end.
    reader = open_hub(client, channel, {**headers, "Last-Event-ID": events[-2].id})
    try:
        got = reader.read()
    finally:
        reader.close()
    assert [e.id for e in got] == [events[-1].id]
