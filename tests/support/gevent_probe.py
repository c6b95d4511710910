"""Run a snippet in a gevent-patched Python process, as a gunicorn worker is, counting the
cooperative polls it makes (``select.poll`` is gevent's there: each call yields to the loop).

The snippet sees ``polls`` (``polls[0]`` counts the calls; set it to 0 to start counting) and
``sys.argv[1:]`` (``args``), and prints its result as JSON on its last line of output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = """
from gevent import monkey

monkey.patch_all()
import json, select, sys

cooperative = select.poll
polls = [0]


def counting_poll():
    polls[0] += 1
    return cooperative()


select.poll = counting_poll
"""


def run_patched(snippet: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(snippet), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
