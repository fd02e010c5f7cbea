"""Fuzzing the config and scenario loaders: any input loads, or is refused with a SafeshipError of
one line. No other exception may escape, whatever the bytes, the YAML or the values in it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeship.config.loader import load_config, load_rollback_settings
from safeship.config.scenario import load_scenario
from safeship.errors import SafeshipError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Keys of the real schema, so that generated documents reach the validators instead of stopping
# at "unknown field".
KEYS = [
    "intelligent_deployment", "environment_management", "services", "store", "state_dir", "router_process",
    "strategies", "health_checks", "rollback", "analysis", "blue_green", "canary", "rolling", "recreate",
    "enabled", "health_check_timeout", "traffic_switch_timeout", "scale_down_delay", "post_switch_analysis",
    "traffic_percentages", "step_duration", "min_step_duration", "adaptive", "max_unavailable", "max_surge",
    "step_analysis", "max_wait", "liveness", "readiness", "type", "path", "command", "timeout", "interval",
    "failure_threshold", "success_threshold", "initial_delay", "auto_rollback", "triggers", "threshold",
    "duration", "statistic", "metric", "rollback_timeout", "max_rollback_attempts", "stable_after", "monitoring",
    "alpha", "error_tolerance", "latency_tolerance", "error_limit", "ramp_time", "environments",
    "security_policies", "name", "cluster", "namespace", "resource_quotas", "cpu", "memory", "availability",
    "platform", "router_port_base", "variables", "approval", "freeze_windows", "days", "start", "end",
    "timezone", "max_concurrent_deployments", "config_maps", "run_as_user", "user-service", "criticality",
    "replicas", "resources", "env", "secrets", "versions", "router_port", "grace_period", "simulate",
    "error_rate", "latency_p50_ms", "latency_p99_ms", "ready", "crash_after_s", "onset_s", "rps", "url",
    "v1.2.0", "rules", "verbs",
]
SCENARIO_KEYS = [
    "name", "description", "seed", "duration_s", "traffic", "baseline", "candidate", "expect", "rps",
    "pattern", "amplitude", "period_s", "error_rate", "latency_ms", "p50", "p99", "onset_s", "ramp_s",
    "ready", "crash_after_s", "metrics", "noise", "fail_above", "rollback", "promote", "constant",
]
VALUES = [
    "5m", "0s", "99999999999h", "250ms", "-1", "sim", "local", "http", "exec", "canary", "production",
    "../../victim", "v1.2.0", "500m", "8Gi", "nan", "inf", "12:30", "2024-02-30", "error_rate_threshold",
    "health_check_failure", "custom_metric", "response_time_threshold", "mean", "p99", "Europe/Berlin",
    "America", "daily", "\x00", "\u202e", "\n",
]


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(),
        st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40), st.sampled_from(VALUES),
    )


def documents(keys: list[str]) -> st.SearchStrategy[Any]:
    key = st.one_of(st.sampled_from(keys), st.text(max_size=12))
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(key, inner, max_size=6)),
        max_leaves=40,
    )


def as_yaml(document: Any) -> str:
    try:
        return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, ValueError):  # an int too long for str(): write it by hand
        return "x: " + "9" * 5000 + "\n"


def outcome(load: Any, content: str | bytes) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_bytes(content.encode("utf-8", "surrogatepass"))
        try:
            load(path)
        except SafeshipError as exc:
            text = str(exc)
            assert "\n" not in text and "\r" not in text, text
            assert len(text) < 1000, text
            return "refused"
    return "loaded"


def schema_document() -> st.SearchStrategy[Any]:
    # Mostly the real top-level sections, so the nested validators are exercised.
    return st.fixed_dictionaries({}, optional={
        "intelligent_deployment": documents(KEYS), "environment_management": documents(KEYS),
        "services": st.dictionaries(st.sampled_from(["user-service", "web", "A b", ""]), documents(KEYS),
                                    max_size=2),
    })


@FUZZ
@given(st.one_of(documents(KEYS), schema_document()))
def test_generated_configs_load_or_are_refused_in_one_line(document: Any) -> None:
    outcome(load_config, as_yaml(document))


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_as_a_config(text: str) -> None:
    outcome(load_config, text)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_config(raw: bytes) -> None:
    outcome(load_config, raw)


@FUZZ
@given(st.lists(st.sampled_from([
    "services:\n", "  user-service:\n", "    replicas: ", "true", "0x1F", "1_000", "\n", "    versions: [",
    "&a [*a]", "*a", "]\n", "{", "}", "- ", "<<: ", "!!binary ", "!!python/name:os.system", "? ", ": ",
    "'", '"', "\t", "#", "---\n", "...\n", "\ufeff", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "!x ",
    "2024-13-45", "9" * 50, ".inf", ".nan", "~", "|\n  x\n", ">-\n  y\n",
]), max_size=30))
def test_yaml_fragments_as_a_config(parts: list[str]) -> None:
    outcome(load_config, "".join(parts))


@FUZZ
@given(documents(KEYS))
def test_generated_rollback_settings_load_or_are_refused_in_one_line(document: Any) -> None:
    outcome(load_rollback_settings, as_yaml({"rollback": document}))


@FUZZ
@given(st.one_of(
    documents(SCENARIO_KEYS),
    st.fixed_dictionaries({"name": st.text(max_size=20), "expect": st.sampled_from(["rollback", "promote"])},
                          optional={k: documents(SCENARIO_KEYS) for k in ("traffic", "baseline", "candidate")}
                          | {"seed": scalars(), "duration_s": scalars()}),
))
def test_generated_scenarios_load_or_are_refused_in_one_line(document: Any) -> None:
    outcome(load_scenario, as_yaml(document))


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_arbitrary_input_as_a_scenario(content: str | bytes) -> None:
    outcome(load_scenario, content)


def test_the_fuzz_checker_can_fail() -> None:
    """outcome() lets a non-SafeshipError through, so the tests above would catch a crash."""
    def crash(path: Path) -> None:
        raise KeyError(path)

    try:
        outcome(crash, "x: 1\n")
    except KeyError:
        return
    raise AssertionError("a crash was swallowed")
