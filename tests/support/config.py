"""Configuration shared by the in-process apps and the live gunicorn servers of the tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEST_SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse battery staple"
# The tests' users are hashed with this argon2id profile (tests/conftest.py ``make_user``) and the
# apps hash with it too, so a test login verifies a cheap hash and re-hashes nothing. A test about
# hashing itself asks for PRODUCTION_HASHING (RFC 9106 low-memory, the app's default).
TEST_HASHING = {
    "PASSWORD_HASH_TIME_COST": "1",
    "PASSWORD_HASH_MEMORY_KIB": "1024",
    "PASSWORD_HASH_PARALLELISM": "1",
}
PRODUCTION_HASHING = {
    "PASSWORD_HASH_TIME_COST": "3",
    "PASSWORD_HASH_MEMORY_KIB": "65536",
    "PASSWORD_HASH_PARALLELISM": "4",
}


def app_config(redis_url: str, db_url: str, llm_url: str, **extra: Any) -> dict[str, Any]:
    """``create_app`` config for a test app on the given Redis, database and model server."""
    return {
        "TESTING": True,
        "JWT_SECRET_KEY": TEST_SECRET,
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "LLM_BASE_URL": llm_url,
        "LLM_MODELS": ["fake-model"],
        "JWT_COOKIE_SECURE": False,
        "LOG_LEVEL": "WARNING",
        **{name: int(value) for name, value in TEST_HASHING.items()},
        "OVERLOAD_LAG_MS": 0,  # see live_env: the door's lag depends on the machine, not the test
        **extra,
    }


def live_env(redis_url: str, db_url: str, llm_url: str, **extra: str) -> dict[str, str]:
    """The environment of a live gunicorn server; ``extra`` may replace any of it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(
        JWT_SECRET_KEY=TEST_SECRET,
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        LLM_BASE_URL=llm_url,
        LLM_MODELS="fake-model",
        JWT_COOKIE_SECURE="false",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
        **TEST_HASHING,
    )
    # The event-loop-lag door sheds load by how late the loop runs, which on a shared CI machine
    # depends on what else runs there: a live test that is not about the door must not see its
    # 503s. The door is tested where it is the subject (tests/streaming/test_saturation.py, and
    # the soak, which sets OVERLOAD_LAG_MS itself).
    env.setdefault("OVERLOAD_LAG_MS", "0")
    env.update(extra)  # live_overrides may replace any of the above (e.g. LLM_BASE_URL)
    return env
