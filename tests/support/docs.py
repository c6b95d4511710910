"""The runnable examples of ``docs/*.md``: fenced blocks whose info string has ``title=...``."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from tests.support.config import ROOT

DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w+)[ \t]*([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)


@dataclass
class Example:
    page: str
    lang: str
    title: str
    expect: list[str]
    code: str


def examples(page: str) -> list[Example]:
    """The titled examples of ``docs/<page>``, in order (``expect=...`` names required output)."""
    found = []
    for lang, info, code in FENCE.findall((DOCS / page).read_text(encoding="utf-8")):
        attrs = dict(part.split("=", 1) for part in shlex.split(info) if "=" in part)
        if "title" in attrs:
            expect = [attrs["expect"]] if "expect" in attrs else []
            found.append(Example(page, lang, attrs["title"], expect, code))
    return found
