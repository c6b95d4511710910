"""Password hashing and the login throttle (per pair, account and address; 429 + Retry-After)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.support.config import PASSWORD, PRODUCTION_HASHING

MAX = 5  # LOGIN_MAX_FAILURES default: per (account, address) pair
ACCOUNT_MAX = 10  # LOGIN_MAX_ACCOUNT_FAILURES here (default 50)
ADDRESS_MAX = 10  # LOGIN_MAX_ADDRESS_FAILURES here (default 100)
WINDOW = 900  # LOGIN_WINDOW_S default


def test_hashes_are_argon2id_salted_and_verify() -> None:
    from auth.passwords import hash_password, needs_rehash, verify_password

    first, second = hash_password("s3cret-pass"), hash_password("s3cret-pass")

    assert first.startswith("$argon2id$") and first != second
    assert verify_password(first, "s3cret-pass")
    assert not verify_password(first, "s3cret-pasS")
    assert not verify_password("not a hash", "s3cret-pass")
    assert not verify_password(None, "s3cret-pass")  # unknown account: same work, never a match
    assert not needs_rehash(first)


@pytest.mark.parametrize(
    ("app_overrides", "params"),
    [
        ({"PASSWORD_HASH_TIME_COST": 2, "PASSWORD_HASH_MEMORY_KIB": 2048}, "m=2048,t=2,p=1"),
        ({name: int(value) for name, value in PRODUCTION_HASHING.items()}, "m=65536,t=3,p=4"),
    ],
)
def test_new_hashes_use_the_configured_profile(app: Any, params: str) -> None:
    from auth.passwords import hash_password, needs_rehash

    with app.app_context():
        stored = hash_password("s3cret-pass")
        assert f"${params}$" in stored  # what the stored hash says it was made with
        assert not needs_rehash(stored)
        assert needs_rehash(stored.replace(params, "m=1024,t=1,p=1"))


@pytest.mark.parametrize(
    "app_overrides", [{name: int(value) for name, value in PRODUCTION_HASHING.items()}]
)
def test_a_weak_stored_hash_is_upgraded_at_login(make_user: Any, login: Any) -> None:
    from auth.passwords import needs_rehash, verify_password
    from core.store import db

    user = make_user()  # the fixture hashes with cheap parameters
    assert needs_rehash(user.password_hash)

    assert login(user).status_code == 200

    db.session.refresh(user)
    assert not needs_rehash(user.password_hash)
    assert verify_password(user.password_hash, PASSWORD)


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    # Low ceilings so the tests reach them; the per-minute attempt limits are out of the way
    # here (tests/auth/test_login.py checks them).
    return {
        "LOGIN_MAX_ACCOUNT_FAILURES": ACCOUNT_MAX,
        "LOGIN_MAX_ADDRESS_FAILURES": ADDRESS_MAX,
        "LOGIN_ACCOUNT_RPM": 1000,
        "LOGIN_ADDRESS_RPM": 1000,
    }


def _fail(login: Any, user: Any, times: int, *, addr: str | None = None) -> None:
    for i in range(times):
        response = login(user, "wrong password", addr=addr or f"10.0.0.{i + 1}")
        assert response.status_code == 401


def _assert_throttled(response: Any) -> None:
    assert response.status_code == 429, response.get_json()
    wait = int(response.headers["Retry-After"])
    assert 0 < wait <= WINDOW
    assert (
        response.get_json()["message"] == f"Too many login attempts; try again in {wait} seconds."
    )


@pytest.mark.db
def test_an_address_guessing_one_account_is_throttled_but_the_owner_is_not_locked_out(
    make_user: Any, login: Any
) -> None:
    user = make_user()
    _fail(login, user, MAX, addr="10.0.9.9")  # the attacker's address

    _assert_throttled(login(user, addr="10.0.9.9"))  # even with the right password
    _assert_throttled(login(user, "wrong password", addr="10.0.9.9"))
    assert login(user, addr="10.0.1.1").status_code == 200  # the owner, elsewhere, gets in


@pytest.mark.db
def test_an_account_has_a_softer_ceiling_across_addresses(make_user: Any, login: Any) -> None:
    user = make_user()
    _fail(login, user, ACCOUNT_MAX)  # each from its own address: no pair is full

    _assert_throttled(login(user, addr="10.0.1.1"))


@pytest.mark.db
def test_the_429_is_the_same_whether_or_not_the_account_exists(
    make_user: Any, make_tenant: Any, login: Any
) -> None:
    real = make_user()
    ghost = type("Ghost", (), {"tenant_id": real.tenant_id, "email": "nobody@example.com"})()
    _fail(login, real, MAX, addr="10.1.0.1")
    _fail(login, ghost, MAX, addr="10.2.0.1")

    for_real = login(real, "wrong password", addr="10.1.0.1")
    for_ghost = login(ghost, "wrong password", addr="10.2.0.1")

    _assert_throttled(for_real)
    _assert_throttled(for_ghost)
    assert (
        for_real.get_json()["message"].split(" in ")[0]
        == for_ghost.get_json()["message"].split(" in ")[0]
    )


@pytest.mark.db
def test_an_address_is_throttled_across_accounts(make_user: Any, login: Any) -> None:
    victims = [make_user() for _ in range(ADDRESS_MAX)]
    for victim in victims:
        _fail(login, victim, 1, addr="10.3.0.1")

    _assert_throttled(login(make_user(), addr="10.3.0.1"))
    assert login(make_user(), addr="10.3.0.2").status_code == 200  # another address is fine


@pytest.mark.db
def test_a_success_clears_the_pairs_failures(make_user: Any, login: Any) -> None:
    user = make_user()
    _fail(login, user, MAX - 1, addr="10.4.0.1")

    assert login(user, addr="10.4.0.1").status_code == 200
    _fail(login, user, MAX - 1, addr="10.4.0.1")

    assert login(user, addr="10.4.0.1").status_code == 200


def test_parallel_guesses_cannot_overshoot_the_limit(app: Any) -> None:
    from auth.passwords import reserve_login_attempt
    from core.errors import ApiError

    admitted: list[int] = []
    refused: list[int] = []
    start = threading.Barrier(20)

    def guess(i: int) -> None:
        with app.app_context():
            start.wait()
            try:
                reserve_login_attempt("acme", "victim@example.com", "10.5.0.1")
                admitted.append(i)
            except ApiError as exc:
                assert exc.code == 429
                refused.append(i)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(admitted) == MAX and len(refused) == 20 - MAX


@pytest.mark.db
def test_login_with_no_such_tenant_is_throttled_like_any_other(client: Any, make_user: Any) -> None:
    body = {"tenant": "ghost-tenant", "email": "a@example.com", "password": "nope nope"}
    for _ in range(MAX):
        assert client.post("/v1/auth/login", json=body).status_code == 401

    _assert_throttled(client.post("/v1/auth/login", json=body))


def test_under_gevent_a_hash_runs_in_another_os_thread_and_the_loop_keeps_turning(
    redis_server: Any, tmp_path: Any
) -> None:
    """What gunicorn's gevent worker does: monkey-patch, then log users in."""
    import subprocess
    import sys
    import textwrap

    from tests.support.config import ROOT, app_config

    # The production argon2id profile: a hash long enough for the loop to turn meanwhile.
    hashing = {name: int(value) for name, value in PRODUCTION_HASHING.items()}
    config = app_config(
        redis_server.url, f"sqlite:///{tmp_path}/x.db", "http://127.0.0.1:9/v1", **hashing
    )
    script = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import gevent
        import threading
        from api import create_app
        from auth.passwords import hash_password, off_loop, verify_password

        real_ident = monkey.get_original("threading", "get_ident")
        app = create_app({config!r})
        ticks = []

        def ticker():
            while True:
                ticks.append(1)
                gevent.sleep(0.005)

        with app.app_context():
            stored = hash_password("s3cret-pass")
            loop_thread = real_ident()
            worker_thread = off_loop(real_ident)
            ticker_greenlet = gevent.spawn(ticker)
            gevent.sleep(0)
            before = len(ticks)
            assert verify_password(stored, "s3cret-pass")
            during = len(ticks) - before
            ticker_greenlet.kill()
        print(worker_thread != loop_thread, during)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    other_thread, ticks_during_verify = done.stdout.split()
    assert other_thread == "True"  # the hash ran in the hub's thread pool
    assert int(ticks_during_verify) > 0  # and other greenlets ran while it did
