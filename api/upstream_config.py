"""``LLM_UPSTREAMS``: the model servers, read and checked once at start-up.

The value is inline JSON (it starts with ``[`` or ``{``) or the path of a YAML or JSON file, holding
a list of upstreams (or ``{"upstreams": [...]}``). Each is
``{name, base_url, api_key?, models, weight?, max_concurrent?}``; ``models`` is a list of public
names or an object mapping a public name (what tenants see) to the server's own model name.
``${NAME}`` in ``base_url`` or ``api_key`` is replaced by that environment variable. Every problem
is a ``ValueError`` naming the entry and the field, which ``api.config`` turns into a start-up
failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FIELDS = frozenset({"name", "base_url", "api_key", "models", "weight", "max_concurrent"})


def parse_upstreams(raw: str, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The upstream entries of ``raw``, checked, with ``${ENV}`` references replaced."""
    text = raw.strip()
    if text.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from exc
    else:
        data = _read_file(Path(text))
    if isinstance(data, dict) and "upstreams" in data:
        data = data["upstreams"]
    if not isinstance(data, list) or not data:
        raise ValueError("expected a non-empty list of upstreams")
    entries = [_entry(i, item, env) for i, item in enumerate(data, start=1)]
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        if entry["name"] in seen:
            raise ValueError(f"entry {i} ({entry['name']!r}): name: used by an earlier entry")
        seen.add(entry["name"])
    return entries


def _read_file(path: Path) -> Any:
    try:
        content = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            return json.loads(content)
        return yaml.safe_load(content)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc


def _entry(index: int, item: Any, env: Mapping[str, str]) -> dict[str, Any]:
    label = f"entry {index}"
    if not isinstance(item, dict):
        raise ValueError(f"{label}: expected an object")
    name = item.get("name")
    if isinstance(name, str) and name:
        label = f"entry {index} ({name!r})"

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{label}: {field}: {why}")

    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise bad(unknown[0], "unknown field (expected " + ", ".join(sorted(_FIELDS)) + ")")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad("name", "missing, or not 1-64 letters, digits, '.', '_' or '-'")
    base_url = _expand(item.get("base_url"), env, lambda why: bad("base_url", why))
    if base_url is None:
        raise bad("base_url", "missing")
    if not base_url.startswith(("http://", "https://")):
        raise bad("base_url", f"{base_url!r} is not an http(s) URL")
    api_key = _expand(item.get("api_key"), env, lambda why: bad("api_key", why))
    weight = item.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
        raise bad("weight", "expected a whole number from 1 to 1000")
    limit = item.get("max_concurrent")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise bad("max_concurrent", "expected a whole number of at least 1")
    return {
        "name": name,
        "base_url": base_url.rstrip("/"),
        "api_key": api_key or "not-needed",
        "models": _models(item.get("models"), lambda why: bad("models", why)),
        "weight": weight,
        "max_concurrent": limit,
    }


def _expand(value: Any, env: Mapping[str, str], bad: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad("expected a string")

    def lookup(match: re.Match[str]) -> str:
        if match.group(1) not in env:
            raise bad(f"${{{match.group(1)}}} names an environment variable that is not set")
        return env[match.group(1)]

    return _ENV_REF.sub(lookup, value)


def _models(value: Any, bad: Any) -> dict[str, str]:
    """Public name -> the upstream's own name."""
    if isinstance(value, list):
        if not all(isinstance(public, str) for public in value):
            raise bad("every model name must be a non-empty string")
        value = {public: public for public in value}
    if not isinstance(value, dict) or not value:
        raise bad("expected a non-empty list of names or an object {public name: model name}")
    for public, own in value.items():
        if not isinstance(public, str) or not isinstance(own, str) or not public or not own:
            raise bad("every model name must be a non-empty string")
        if len(public) > 200 or not public.isprintable():
            raise bad(f"{public!r} is not 1-200 printable characters")
    return dict(value)


def public_models(entries: list[dict[str, Any]]) -> list[str]:
    """Every public model name the upstreams serve, in the order they are first named."""
    return list(dict.fromkeys(public for entry in entries for public in entry["models"]))


def settle_upstreams(values: dict[str, Any], env: Mapping[str, str], models_given: bool) -> None:
    """Parse ``values["LLM_UPSTREAMS"]`` if it is still text; check ``LLM_MODELS`` against it.

    With upstreams described, ``LLM_MODELS`` (a new tenant's default models) defaults to every
    public model they serve, and may name no model that none of them serves.
    """
    raw = values.get("LLM_UPSTREAMS")
    if isinstance(raw, str):
        values["LLM_UPSTREAMS"] = parse_upstreams(raw, env) if raw.strip() else []
    entries = values["LLM_UPSTREAMS"]
    if not entries:
        return
    served = public_models(entries)
    if not models_given:
        values["LLM_MODELS"] = served
        return
    for model in values["LLM_MODELS"]:
        if model not in served:
            raise ValueError(f"LLM_MODELS names {model!r}, which no upstream serves")
