"""Model servers: ``LLM_UPSTREAMS`` parsing, the weighted order, and the shared state in Redis.

The configuration is refused with a message naming the entry and the field; the order is nginx's
smooth weighted round-robin; leases, cooldowns and the one probe after a cooldown are checked on a
real Redis.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from api.config import ConfigError, load_config
from api.upstream_config import parse_upstreams
from streaming import upstreams
from streaming.upstreams import NoUpstream, Router, SmoothWeighted, Upstream, UpstreamSpec
from tests.support.config import TEST_SECRET

GOOD = [
    {"name": "gpu-a", "base_url": "http://10.0.0.1:8000/v1", "models": ["llama"], "weight": 3},
    {
        "name": "hosted",
        "base_url": "https://api.example.com/v1/",
        "api_key": "${HOSTED_KEY}",
        "models": {"llama": "meta-llama/Llama-3.1-8B", "small": "gpt-4o-mini"},
        "max_concurrent": 10,
    },
]


# --- configuration -------------------------------------------------------------------------------


def test_inline_json_is_read_with_aliases_defaults_and_env_keys() -> None:
    entries = parse_upstreams(json.dumps(GOOD), {"HOSTED_KEY": "sk-1"})
    assert entries[0] == {
        "name": "gpu-a",
        "base_url": "http://10.0.0.1:8000/v1",
        "api_key": "not-needed",
        "models": {"llama": "llama"},
        "weight": 3,
        "max_concurrent": None,
    }
    assert entries[1]["api_key"] == "sk-1"
    assert entries[1]["base_url"] == "https://api.example.com/v1"
    assert entries[1]["models"] == {"llama": "meta-llama/Llama-3.1-8B", "small": "gpt-4o-mini"}
    assert entries[1]["weight"] == 1


def test_a_yaml_file_and_a_json_file_say_the_same(tmp_path: Path) -> None:
    import yaml

    as_yaml, as_json = tmp_path / "upstreams.yaml", tmp_path / "upstreams.json"
    as_yaml.write_text(yaml.safe_dump({"upstreams": GOOD}))
    as_json.write_text(json.dumps(GOOD))
    env = {"HOSTED_KEY": "k"}
    assert parse_upstreams(str(as_yaml), env) == parse_upstreams(str(as_json), env)


@pytest.mark.parametrize(
    ("value", "env", "message"),
    [
        ('[{"name": "a", "base_url": ', {}, "not valid JSON"),
        ('[{"name": "a", "models": ["m"]}]', {}, "entry 1 ('a'): base_url: missing"),
        (
            '[{"name": "a", "base_url": "http://x/v1", "models": ["m"]},'
            ' {"name": "b", "base_url": "http://y/v1", "api_key": "${NOPE}", "models": ["m"]}]',
            {},
            "entry 2 ('b'): api_key: ${NOPE} names an environment variable that is not set",
        ),
        ('[{"base_url": "http://x/v1", "models": ["m"]}]', {}, "entry 1: name: missing"),
        ('[{"name": "a", "base_url": "http://x/v1"}]', {}, "entry 1 ('a'): models: expected"),
        ('[{"name": "a", "base_url": "ftp://x", "models": ["m"]}]', {}, "base_url: 'ftp://x'"),
        (
            '[{"name": "a", "base_url": "http://x/v1", "models": ["m"], "weight": 0}]',
            {},
            "entry 1 ('a'): weight: expected a whole number",
        ),
        (
            '[{"name": "a", "base_url": "http://x/v1", "models": ["m"], "max_concurrent": "2"}]',
            {},
            "entry 1 ('a'): max_concurrent:",
        ),
        (
            '[{"name": "a", "base_url": "http://x/v1", "models": ["m"], "wieght": 2}]',
            {},
            "entry 1 ('a'): wieght: unknown field",
        ),
        (
            '[{"name": "a", "base_url": "http://x/v1", "models": ["m"]},'
            ' {"name": "a", "base_url": "http://y/v1", "models": ["m"]}]',
            {},
            "entry 2 ('a'): name: used by an earlier entry",
        ),
        ("no-such-dir/upstreams.yaml", {}, "cannot read no-such-dir/upstreams.yaml"),
        ("[]", {}, "non-empty list"),
    ],
)
def test_a_bad_value_names_the_entry_and_the_field(
    value: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        parse_upstreams(value, env)
    assert message in str(caught.value)


def test_a_bad_yaml_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "up.yaml"
    path.write_text("- name: a\n  models: [m\n")
    with pytest.raises(ValueError, match=r"up\.yaml is not valid YAML"):
        parse_upstreams(str(path), {})


def _environ(**extra: str) -> dict[str, str]:
    return {"JWT_SECRET_KEY": TEST_SECRET, **extra}


def test_load_config_refuses_a_bad_value_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"LLM_UPSTREAMS: entry 1 \('a'\): base_url: missing"):
        load_config(_environ(LLM_UPSTREAMS='[{"name": "a", "models": ["m"]}]'))


def test_new_tenants_default_to_every_public_model_served() -> None:
    config = load_config(_environ(LLM_UPSTREAMS=json.dumps(GOOD), HOSTED_KEY="k"))
    assert config["LLM_MODELS"] == ["llama", "small"]


def test_llm_models_may_not_name_a_model_no_upstream_serves() -> None:
    env = _environ(LLM_UPSTREAMS=json.dumps(GOOD), HOSTED_KEY="k", LLM_MODELS="llama,mystery")
    with pytest.raises(ConfigError, match="LLM_MODELS names 'mystery', which no upstream serves"):
        load_config(env)


def test_without_llm_upstreams_one_upstream_serves_every_model_as_named() -> None:
    config = load_config(_environ(LLM_BASE_URL="http://127.0.0.1:9/v1"))
    (spec,) = upstreams.specs_from_config(config)
    assert spec.base_url == "http://127.0.0.1:9/v1"
    assert spec.serves("anything") and spec.own_model("anything") == "anything"


# --- the weighted order --------------------------------------------------------------------------


def test_smooth_weighted_round_robin_interleaves_exactly_by_weight() -> None:
    rotation = SmoothWeighted({"a": 3, "b": 1})
    picks = [rotation.pick() for _ in range(8)]
    assert picks == ["a", "a", "b", "a"] * 2  # never "a" three times in a row, 3 of every 4
    five = SmoothWeighted({"a": 5, "b": 3, "c": 2})
    assert Counter(five.pick() for _ in range(100)) == {"a": 50, "b": 30, "c": 20}


def _router(*specs: UpstreamSpec, **config: Any) -> Router:
    settings = {
        "LLM_COOLDOWN_FAILURES": 2,
        "LLM_COOLDOWN_S": 30.0,
        "LEASE_TTL_S": 30,
        "LLM_CONNECT_TIMEOUT_S": 1.0,
        "LLM_READ_TIMEOUT_S": 1.0,
        **config,
    }
    return Router([Upstream(spec, provider=None) for spec in specs], settings)  # type: ignore[arg-type]


A = UpstreamSpec("a", "http://a/v1", "k", {"m": "m"}, weight=3)
B = UpstreamSpec("b", "http://b/v1", "k", {"m": "m-own", "only-b": "x"}, max_concurrent=1)


def test_each_request_tries_every_upstream_serving_its_model_once() -> None:
    rt = _router(A, B)
    orders = [[u.name for u in rt.order("m")] for _ in range(4)]
    assert orders == [["a", "b"], ["a", "b"], ["b", "a"], ["a", "b"]]
    assert [u.name for u in rt.order("only-b")] == ["b"]
    assert rt.order("nobody") == []
    assert rt.public_models() == ["m", "only-b"]


# --- shared state in Redis -----------------------------------------------------------------------


def test_max_concurrent_is_a_lease_that_lapses_when_its_holder_dies(redis: Any) -> None:
    rt = _router(B, LEASE_TTL_S=0.3)
    first = upstreams.take(redis, rt, rt.order("m"), "str_1")
    with pytest.raises(NoUpstream) as busy:
        upstreams.take(redis, rt, rt.order("m"), "str_2")
    assert busy.value.busy
    upstreams.release(redis, first, "str_1")
    held = upstreams.take(redis, rt, rt.order("m"), "str_2")  # freed by its release
    assert held.upstream.name == "b"
    # str_2's worker dies without releasing: nobody renews the lease, and it lapses.
    deadline = time.monotonic() + 5
    while True:
        try:
            upstreams.take(redis, rt, rt.order("m"), "str_3")
            break
        except NoUpstream:
            assert time.monotonic() < deadline, "the lease never lapsed"
            time.sleep(0.05)


def test_failures_in_a_row_cool_an_upstream_down_then_one_probe_brings_it_back(
    redis: Any,
) -> None:
    rt = _router(A, UpstreamSpec("b2", "http://b2/v1", "k", {"m": "m"}), LLM_COOLDOWN_S=0.4)
    candidates = [rt.upstreams["a"], rt.upstreams["b2"]]
    slot = upstreams.take(redis, rt, candidates, "str_1")
    assert slot.upstream.name == "a"
    assert not upstreams.failed(redis, rt, slot, "connect")
    assert upstreams.failed(redis, rt, slot, "connect")  # the second in a row: out of rotation
    upstreams.release(redis, slot, "str_1")
    cooling = {u["name"]: u for u in upstreams.status(redis, rt)}["a"]
    assert cooling["state"] == "cooling_down" and cooling["consecutive_failures"] == 2
    assert upstreams.take(redis, rt, candidates, "str_2").upstream.name == "b2"
    # After the cooldown one request probes it; the others keep going elsewhere meanwhile.
    deadline = time.monotonic() + 5
    while (probe := upstreams.take(redis, rt, candidates, "str_3")).upstream.name != "a":
        assert time.monotonic() < deadline, "no probe after the cooldown"
        time.sleep(0.05)
    assert probe.how == upstreams.PROBE
    assert upstreams.take(redis, rt, candidates, "str_4").upstream.name == "b2"
    upstreams.succeeded(redis, probe)
    assert {u["name"]: u["state"] for u in upstreams.status(redis, rt)}["a"] == "healthy"
    assert upstreams.take(redis, rt, candidates, "str_5").upstream.name == "a"


def test_a_failed_probe_starts_another_cooldown(redis: Any) -> None:
    rt = _router(A, LLM_COOLDOWN_S=0.2, LLM_COOLDOWN_FAILURES=1)
    slot = upstreams.take(redis, rt, [rt.upstreams["a"]], "str_1")
    assert upstreams.failed(redis, rt, slot, "status_5xx")
    time.sleep(0.25)  # let the cooldown pass (the state under test is the one after it)
    probe = upstreams.take(redis, rt, [rt.upstreams["a"]], "str_2")
    assert probe.how == upstreams.PROBE
    assert upstreams.failed(redis, rt, probe, "status_5xx")
    assert {u["name"]: u["state"] for u in upstreams.status(redis, rt)}["a"] == "cooling_down"


def test_when_every_candidate_is_cooling_down_the_request_still_tries_one(redis: Any) -> None:
    # Refusing outright would fail a request that the upstream might serve: one model server
    # (LLM_BASE_URL alone) must behave exactly as without cooldowns.
    rt = _router(A, LLM_COOLDOWN_FAILURES=1)
    slot = upstreams.take(redis, rt, [rt.upstreams["a"]], "str_1")
    upstreams.failed(redis, rt, slot, "connect")
    again = upstreams.take(redis, rt, [rt.upstreams["a"]], "str_2")
    assert again.upstream.name == "a" and again.how == upstreams.DESPERATE


def test_the_readme_example_is_a_valid_configuration(tmp_path: Path) -> None:
    import re

    from tests.support.config import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Model servers") :]
    example = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert example, "README's Model servers section lost its YAML example"
    path = tmp_path / "upstreams.yaml"
    path.write_text(example.group(1))
    entries = parse_upstreams(str(path), {"OPENAI_API_KEY": "sk-test"})
    assert [e["name"] for e in entries] == ["gpu-a", "gpu-b", "embed-host", "hosted"]
    assert entries[3]["models"] == {"llama-3.1-8b": "gpt-4o-mini"}
    assert entries[3]["api_key"] == "sk-test"


def test_a_probe_that_ends_without_a_verdict_lets_the_next_request_probe(redis: Any) -> None:
    # The probing client hung up before the server answered: another request must be able to
    # probe at once, not after the probe key's expiry (the longest wait).
    rt = _router(A, LLM_COOLDOWN_S=0.01, LLM_COOLDOWN_FAILURES=1)
    slot = upstreams.take(redis, rt, [rt.upstreams["a"]], "str_1")
    upstreams.failed(redis, rt, slot, "connect")
    upstreams.release(redis, slot, "str_1")
    deadline = time.monotonic() + 5
    while (probe := upstreams.take(redis, rt, [rt.upstreams["a"]], "str_2")).how != upstreams.PROBE:
        upstreams.release(redis, probe, "str_2")
        assert time.monotonic() < deadline, "no probe after the cooldown"
        time.sleep(0.02)
    upstreams.release(redis, probe, "str_2")  # no success, no failure
    again = upstreams.take(redis, rt, [rt.upstreams["a"]], "str_3")
    assert again.how == upstreams.PROBE
