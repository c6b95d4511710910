"""What admission adds to a generation start: the limits Lua scripts timed at a fixed request rate.

    python -m bench.admission [--rate 200] [--seconds 20] [--users 50] [--tenants 5]

Starts its own redis-server on a free loopback port (stopped by PID at the end) and an app on a
throwaway SQLite file, then, open loop at ``--rate`` calls per second from one client, times:

- ``ping``: one Redis round trip, the floor any Redis-backed check pays;
- ``admit``: ``RedisAdmissionControl.admit`` (``streaming.limits``: the one script checking all
  eight limits, limits cached);
- ``release``: the settlement at the end of a run (lease dropped, reservation reconciled);
- ``admit_end_user`` / ``release_end_user``: the same for an app token with ``end_user_limits``
  and a request naming one of its end users (twelve limits in the one script).

Admission is on the request path of every generation start; release runs after the stream.
Prints p50 / p99 / max in milliseconds and writes them to ``bench/results/admission.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.stack import free_port, redis_argv, wait_for_redis

ROOT = Path(__file__).resolve().parent.parent
HIGH = {"rpm": 10**9, "concurrent": 10**9, "tpm": 10**12, "tpd": 10**13}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        redis_argv(port, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_redis(port)
    except RuntimeError:
        proc.kill()
        raise
    return proc, port


def run(rate: float, seconds: float, users: int, tenants: int) -> dict[str, Any]:
    from api import create_app
    from auth.access import APP_PRINCIPAL, Identity
    from auth.models import AppToken, Tenant, User
    from core.store import db, get_redis, new_id, utcnow
    from streaming.limits import admission_control

    workdir = tempfile.mkdtemp(prefix="sg-bench-admission-")
    proc, port = start_redis(workdir)
    try:
        app = create_app(
            {
                "TESTING": True,
                "JWT_SECRET_KEY": "bench-" + "x" * 40,
                "LOG_LEVEL": "WARNING",
                "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                "DATABASE_URL": f"sqlite:///{workdir}/bench.db",
            }
        )
        with app.app_context():
            db.create_all()
            idents, apps = [], []
            for t in range(tenants):
                tenant = Tenant(slug=f"bench-{t}", name=f"Bench {t}", limits=HIGH)
                db.session.add(tenant)
                db.session.flush()
                for _ in range(users // tenants):
                    user = User(
                        tenant_id=tenant.id,
                        email=f"{new_id('u')}@bench",
                        role="member",
                        password_hash="x",
                        limits=HIGH,
                    )
                    db.session.add(user)
                    db.session.flush()
                    idents.append(
                        Identity(
                            user.id,
                            tenant.id,
                            "member",
                            frozenset({"chat"}),
                            "jti",
                            "user",
                            time.time() + 3600,
                        )
                    )
                app_token = AppToken(
                    jti=new_id("jti"),
                    tenant_id=tenant.id,
                    owner_id=idents[-1].user_id,
                    name="bench",
                    scopes=["chat"],
                    expires_at=utcnow() + timedelta(days=1),
                    limits=HIGH,
                    end_user_limits=HIGH,
                )
                db.session.add(app_token)
                apps.append((tenant.id, APP_PRINCIPAL + app_token.jti))
            db.session.commit()
            control = admission_control(app)
            client = get_redis()
            for ident in idents:  # warm: limits cached, scripts loaded, as in a running worker
                admission = control.admit(ident.tenant_id, ident.user_id, 600, new_id("str"))
                control.release(admission.info, 100, 50)
            for tenant_id, principal in apps:
                admission = control.admit(tenant_id, principal, 600, new_id("str"), "eu-0")
                control.release(admission.info, 100, 50)
            names = ("ping", "admit", "release", "admit_end_user", "release_end_user")
            timings: dict[str, list[float]] = {name: [] for name in names}
            total = int(rate * seconds)
            start = time.perf_counter()
            late = 0
            for i in range(total):
                target = start + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    late += 1
                ident = idents[i % len(idents)]
                t0 = time.perf_counter()
                client.ping()
                t1 = time.perf_counter()
                admission = control.admit(ident.tenant_id, ident.user_id, 600, new_id("str"))
                t2 = time.perf_counter()
                control.release(admission.info, 100, 50)
                t3 = time.perf_counter()
                tenant_id, principal = apps[i % len(apps)]
                admission = control.admit(
                    tenant_id, principal, 600, new_id("str"), f"eu-{i % 1000}"
                )
                t4 = time.perf_counter()
                control.release(admission.info, 100, 50)
                t5 = time.perf_counter()
                for name, took in zip(
                    names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True
                ):
                    timings[name].append(took)
            elapsed = time.perf_counter() - start
        return {
            "rate_per_s": rate,
            "achieved_per_s": round(total / elapsed, 1),
            "late_starts": late,
            "users": len(idents),
            "tenants": tenants,
            **{name: percentiles(samples) for name, samples in timings.items()},
        }
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "admission.json")
    args = parser.parse_args(argv)
    result = run(args.rate, min(args.seconds, 600.0), args.users, args.tenants)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
