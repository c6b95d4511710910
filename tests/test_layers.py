"""The layering contract (import-linter, configured in pyproject.toml) holds, and it bites.

``api -> streaming -> auth -> core``: imports point down only, no cycles between the modules of
``streaming`` or ``auth``, and no HTTP schema library below ``api``. The contract is run on the
real tree, then on copies of it with one deliberate violation each, which it must refuse.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "streaming", "auth", "core")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [LINT, "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of the four packages and the contract, to break on purpose."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(tree: Path, module: str, statement: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n\ndef _violation() -> None:\n    {statement}\n")


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("auth.access", "import streaming.sse  # noqa", "Layers"),
        ("core.store", "import auth.models  # noqa", "Layers"),
        ("streaming.sse", "from api import errors  # noqa", "Layers"),
        (
            "streaming.sse",
            "import streaming.hub  # noqa",
            "No import cycles between the modules of streaming",
        ),
        ("auth.models", "import marshmallow  # noqa", "HTTP resources and schemas live in api"),
    ],
    ids=[
        "auth-imports-streaming",
        "core-imports-auth",
        "streaming-imports-api",
        "cycle-in-streaming",
        "schema-lib-in-auth",
    ],
)
def test_a_violation_is_refused(tree: Path, module: str, statement: str, contract: str) -> None:
    add_import(tree, module, statement)
    result = lint(tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
