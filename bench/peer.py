"""The peer gateway: LiteLLM proxy in its own venv (``bench/.peer-venv``), no database.

Pinned to 1.106.12: the newest release whose ``[proxy]`` extra resolves from the package registry
this project uses (1.108+ require a ``litellm-proxy`` package that is not published there), and not
one of the withdrawn compromised releases. Installed on first use; if that fails the peer is
skipped with the reason, never the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.stack import ROOT, Proc, Stack, free_port, wait_http

LITELLM_SPEC = "litellm[proxy]==1.106.12"
VENV = ROOT / "bench" / ".peer-venv"
MASTER_KEY = "sk-bench-peer-loopback-only"


def executable() -> Path:
    return VENV / "bin" / "litellm"


def ensure_installed(install: bool, timeout: float = 900) -> str | None:
    """None when the proxy is ready to run, else why it is not."""
    if executable().exists():
        return None
    if not install:
        return (
            f"LiteLLM proxy not installed in {VENV} (run without --no-peer-install to install it)"
        )
    try:
        if not (VENV / "bin" / "python").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(VENV)],
                check=True,
                timeout=120,
                capture_output=True,
            )
        print(f"installing {LITELLM_SPEC} into {VENV} (once) ...", flush=True)
        done = subprocess.run(
            [
                str(VENV / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                LITELLM_SPEC,
            ],
            timeout=timeout,
            capture_output=True,
            text=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install {LITELLM_SPEC}: {exc}"
    if done.returncode != 0 or not executable().exists():
        lines = [line for line in (done.stderr or "").splitlines() if line.startswith("ERROR")]
        return f"could not install {LITELLM_SPEC}: " + (
            " ".join(lines)[-400:] or f"pip exit {done.returncode}"
        )
    return None


def start(stack: Stack, workers: int) -> tuple[Proc, str]:
    """Run the proxy on loopback against the stack's fake upstream; returns (process, base url)."""
    port = free_port()
    config = stack.workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: fake-model\n"
        "    litellm_params:\n"
        "      model: openai/fake-model\n"
        f"      api_base: {stack.upstream_url}\n"
        "      api_key: not-needed\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        DISABLE_SCHEMA_UPDATE="True",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    proc = stack._spawn(
        "peer",
        [
            str(executable()),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
        ],
        env=env,
        cwd=stack.workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health/liveliness", proc.popen, 300, proc.log)  # slow on a busy box
    except RuntimeError:
        proc.stop()
        stack.procs.remove(proc)
        raise
    return proc, url
