"""The OpenAI-compatible clients apps point at Streamgate, as the live tests build them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
from pydantic import SecretStr

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI


def chat_openai(base_url: str, token: str, **options: Any) -> ChatOpenAI:
    """LangChain's ``ChatOpenAI`` on Streamgate (``<base_url>/v1``) with ``token`` as its key:
    the fake model, no retries (a retried request would hide what a test counts)."""
    from langchain_openai import ChatOpenAI  # imported when used: it takes a second

    return ChatOpenAI(
        base_url=base_url + "/v1",
        api_key=SecretStr(token),
        model="fake-model",
        max_retries=0,
        timeout=30,
        **options,
    )


def openai_client(base_url: str, token: str, *, max_retries: int = 0) -> openai.OpenAI:
    """The openai SDK on Streamgate (``<base_url>/v1``) with ``token`` as its API key; no retries
    unless asked (a retried request would hide what a test counts)."""
    return openai.OpenAI(
        base_url=base_url + "/v1", api_key=token, max_retries=max_retries, timeout=30
    )
