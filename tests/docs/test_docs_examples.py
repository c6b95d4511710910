"""The examples in docs/ run, as written, against a live server with the fake upstream.

A fenced block whose info string has ``title=...`` is an example: ``sh`` blocks of a page run in
order as one bash script (later blocks use variables earlier ones set), each ``python`` block runs
on its own, and ``js`` blocks are syntax-checked with node when it is installed (their packages,
the openai SDK and fetch-event-source, are not part of this project; the EventSource example runs
in Chromium: tests/browser/test_docs_in_browser.py). ``expect=...`` names text the example must
print.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.accounts import add_account
from tests.support.config import PASSWORD, app_config, live_env
from tests.support.docs import examples
from tests.support.live import close_app, start_gunicorn
from tests.support.processes import stop_process

pytestmark = [pytest.mark.live]
PAGES = ("quickstart.md", "channels.md", "mobile.md", "limits.md", "apps.md")
# Per page, limits its user is given (limits.md shows a 429 with a concurrency limit of 1).
USER_LIMITS = {"limits.md": {"concurrent": 1}}
# Per page, the role of its reader (apps.md issues app tokens and allows webhook origins).
USER_ROLES = {"apps.md": "admin"}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_has_examples_that_run(page: str) -> None:
    runnable = [e for e in examples(page) if e.lang in {"sh", "python"}]
    assert runnable, f"docs/{page} has no executed example"
    titles = [e.title for e in examples(page)]
    assert len(titles) == len(set(titles)), "titles name examples in failures: keep them unique"


@dataclass
class DocsServer:
    url: str
    make_account: Callable[[dict[str, int] | None, str], dict[str, str]]


@pytest.fixture(scope="module")
def docs_server(
    redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DocsServer]:
    """gunicorn workers and a fake model slow enough (40 tokens, 15 ms apart) to be watched."""
    from argon2 import PasswordHasher

    from api import create_app
    from core.store import db

    tmp = tmp_path_factory.mktemp("docs")
    upstream = FakeUpstream(tokens=40, delay_ms=15)
    upstream.start()
    db_url = f"sqlite:///{tmp / 'docs.db'}"
    app = create_app(app_config(redis_server.url, db_url, upstream.base_url))
    hashed = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    proc = None

    def make_account(limits: dict[str, int] | None, role: str = "member") -> dict[str, str]:
        with app.app_context():
            tenant, user = add_account(
                "docs-" + os.urandom(3).hex(),
                "Docs",
                email="reader@docs.test",
                role=role,
                password_hash=hashed,
                limits=limits,
            )
            return {"tenant": tenant.slug, "email": user.email}

    try:
        with app.app_context():
            db.create_all()
        url, proc = start_gunicorn(
            # apps.md's webhook receiver listens on loopback.
            live_env(redis_server.url, db_url, upstream.base_url, WEBHOOK_ALLOW_PRIVATE="true"),
            tmp / "gunicorn.log",
        )
        yield DocsServer(url, make_account)
    finally:
        if proc is not None:
            stop_process(proc)
        close_app(app)
        upstream.stop()


def reader_env(server: DocsServer, page: str) -> dict[str, str]:
    """What the docs tell a reader to export, for a fresh user of a fresh tenant."""
    account = server.make_account(USER_LIMITS.get(page), USER_ROLES.get(page, "member"))
    login = httpx.post(
        server.url + "/v1/auth/login", timeout=30, json={**account, "password": PASSWORD}
    )
    login.raise_for_status()
    token = login.json()["access_token"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "STREAMGATE_"))}
    env.update(
        STREAMGATE_URL=server.url,
        STREAMGATE_TENANT=account["tenant"],
        STREAMGATE_EMAIL=account["email"],
        STREAMGATE_PASSWORD=PASSWORD,
        STREAMGATE_MODEL="fake-model",
        STREAMGATE_TOKEN=token,
        TOKEN=token,
    )
    return env


def run(args: list[str], env: dict[str, str], cwd: Path, what: str) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{output[-4000:]}"
    return output


@pytest.mark.parametrize("page", PAGES)
def test_docs_examples_run(page: str, docs_server: DocsServer, redis: Any, tmp_path: Path) -> None:
    # ``redis``: start from an empty Redis (the server is idle between these tests), so failed
    # logins another test left for 127.0.0.1 cannot throttle the reader's login.
    env = reader_env(docs_server, page)
    shell = [e for e in examples(page) if e.lang == "sh"]
    if shell:
        script = "set -euo pipefail\n" + "".join(
            f"echo '--- {e.title}'\n{e.code}\necho\n" for e in shell
        )
        output = run(["bash", "-c", script], env, tmp_path, f"docs/{page} shell examples")
        for example in shell:
            section = output.split(f"--- {example.title}\n", 1)[1].split("\n--- ", 1)[0]
            for text in example.expect:
                assert text in section, (
                    f"docs/{page} [{example.title}] did not print {text!r}:\n{section}"
                )
    for example in (e for e in examples(page) if e.lang == "python"):
        output = run(
            [sys.executable, "-c", example.code], env, tmp_path, f"docs/{page} [{example.title}]"
        )
        for text in example.expect:
            assert text in output, (
                f"docs/{page} [{example.title}] did not print {text!r}:\n{output}"
            )


@pytest.mark.parametrize("page", [p for p in PAGES if any(e.lang == "js" for e in examples(p))])
def test_docs_javascript_parses(page: str, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    for example in (e for e in examples(page) if e.lang == "js"):
        source = tmp_path / f"{example.title}.mjs"  # modules: top-level await and imports
        source.write_text(example.code, encoding="utf-8")
        run(
            [node, "--check", str(source)],
            dict(os.environ),
            tmp_path,
            f"docs/{page} [{example.title}] (node --check)",
        )
