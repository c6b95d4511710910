"""``make run``: migrate, seed the demo, then run the Procfile with honcho until Ctrl-C.

Steps, one line each: local secrets (``instance/secrets.env``, generated once),
``flask db upgrade``, ``flask seed-demo``, then ``honcho start``. When the app answers ``/readyz``
the URL and the demo credentials are printed again, below the start-up logs.

``python -m scripts.run_local flask ARGS...`` runs one ``flask`` command with the same environment
(``make migrate``, ``make migration``).

The embedded model (``llm``) is skipped when ``LLM_BASE_URL`` or ``LLM_UPSTREAMS`` is set, and the
private Redis (``redis``) when ``REDIS_URL`` is set: the app then uses the servers those point at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx

from scripts.demo_env import DEFAULT_PATH, ensure_secrets

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = ROOT / "instance"
URL = "http://127.0.0.1:8000"


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def environment() -> dict[str, str]:
    """os.environ over the generated secrets, with local-run defaults and the venv on PATH."""
    values, created = ensure_secrets(DEFAULT_PATH)
    verb = "generated" if created else "using"
    step(f"{verb} instance/secrets.env (JWT_SECRET_KEY, mode 600)")
    env = {**values, **os.environ}
    env.setdefault("JWT_COOKIE_SECURE", "false")  # plain http on loopback
    env.setdefault("LOG_FORMAT", "text")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("FLASK_APP", "api:create_app")
    return env


def migrate_and_seed(env: dict[str, str]) -> None:
    """``flask db upgrade`` then ``flask seed-demo``, in this process (one app start, not two)."""
    import flask_migrate

    from api import create_app
    from api.cli import DEMO_CREDENTIALS_FILE, describe_credentials, seed_demo
    from core.store import db

    os.environ.update(env)
    app = create_app()
    with app.app_context():
        database = db.engine.url.render_as_string(hide_password=True)
        step(f"flask db upgrade (migrations/ -> {database})")
        flask_migrate.upgrade()
        step("flask seed-demo")
        path = Path(app.instance_path) / DEMO_CREDENTIALS_FILE
        print(describe_credentials(seed_demo(path, app.config["LLM_MODELS"]), path), flush=True)
        db.engine.dispose()


def banner() -> str:
    lines = [f"Streamgate is up: {URL}   (readiness: {URL}/readyz)"]
    path = INSTANCE / "demo-credentials.json"
    if path.exists():
        demo = json.loads(path.read_text())
        lines.append(f"Demo tenant `{demo['tenant']}`:")
        lines += [f"  {u['role']:<7} {u['email']:<18} {u['password']}" for u in demo["users"]]
    lines.append("Ctrl-C stops everything.")
    width = max(map(len, lines))
    return "\n".join(["=" * width, *lines, "=" * width])


def announce_when_ready(stop: threading.Event, timeout: float = 180) -> None:
    """Print the banner once /readyz answers 200 (or say what is still down)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            response = httpx.get(URL + "/readyz", timeout=3)
            if response.status_code == 200:
                print(banner(), flush=True)
                return
            last = response.json().get("down")
        except (httpx.HTTPError, ValueError) as exc:
            last = type(exc).__name__
        stop.wait(1)
    if not stop.is_set():
        step(f"the app is not ready after {timeout:.0f}s (last: {last}); see the logs above")


def main(argv: list[str]) -> int:
    os.chdir(ROOT)
    if argv[:1] == ["flask"]:
        return subprocess.run([sys.executable, "-m", *argv], env=environment()).returncode
    (INSTANCE / "redis").mkdir(parents=True, exist_ok=True)
    env = environment()
    migrate_and_seed(env)

    processes = ["web"]
    if "REDIS_URL" not in os.environ:
        processes.insert(0, "redis")
    else:
        step(f"REDIS_URL is set: using {os.environ['REDIS_URL']}, not starting redis")
    if os.environ.get("LLM_UPSTREAMS"):
        step("LLM_UPSTREAMS is set: using those model servers, not starting llm")
    elif "LLM_BASE_URL" not in os.environ:
        processes.insert(-1, "llm")
    else:
        step(f"LLM_BASE_URL is set: using {os.environ['LLM_BASE_URL']}, not starting llm")
    step(f"honcho start {' '.join(processes)}  ->  {URL}  (Ctrl-C stops all)")

    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "-d", str(ROOT), *processes],
        cwd=ROOT,
        env=env,
    )

    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        # A terminal's Ctrl-C reaches honcho directly too (same process group); honcho ignores a
        # second request to stop. A signal sent to this script alone is passed on the same way.
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    stop = threading.Event()
    threading.Thread(target=announce_when_ready, args=(stop,), daemon=True).start()
    try:
        returncode = honcho.wait()
    finally:
        stop.set()
    # Stopped on request (Ctrl-C, kill): that is how a local run ends, not a failure.
    return 0 if stopping and returncode in (0, 130, 143, -2, -15) else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
