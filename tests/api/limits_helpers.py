"""Requests the limits tests send (in-process and live), and what admission reserves for them."""

from __future__ import annotations

from typing import Any


def body(text: str = "Tell me a story", max_tokens: int = 50, **knobs: Any) -> dict[str, Any]:
    """A chat request; ``knobs`` steer the fake upstream (``[[fake k=v]]``)."""
    pairs = " ".join(f"{k}={v}" for k, v in knobs.items())
    directive = f" [[fake {pairs}]]" if knobs else ""
    return {
        "model": "fake-model",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text + directive}],
    }


def estimate(request: dict[str, Any]) -> int:
    """What admission reserves for ``request``: the prompt estimate plus max_tokens."""
    from api.services.generations import estimate_prompt_tokens

    return estimate_prompt_tokens(request["messages"]) + request["max_tokens"]


SLOW = body(max_tokens=2000, infinite=1, delay_ms=10)  # runs until stopped, in practice
