"""What a user sees when safeship.yaml is wrong: exit-2 errors of one sentence naming file, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeship.config.loader import load_config, load_rollback_settings, read_yaml
from safeship.config.scenario import load_scenario
from safeship.errors import ConfigError, SafeshipError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

GOOD = """\
environment_management:
  environments:
    - name: "staging"
      platform: sim
services:
  user-service:
    replicas: 2
    versions: [v1.2.0, v1.3.0]
    simulate:
      v1.3.0: {error_rate: 0.2}
"""


def refused(tmp_path: Path, text: str | bytes) -> ConfigError:
    path = tmp_path / "safeship.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert error.exit_code == 2
    assert "\n" not in str(error) and str(error).startswith(f"{path}: "), str(error)
    return error


def test_a_valid_config_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.services["user-service"].simulate["v1.3.0"].error_rate == 0.2
    assert [e.name for e in config.environment_management.environments] == ["staging"]


def test_the_examples_still_load() -> None:
    for name in ("safeship.yaml", "demo.yaml"):
        config = load_config(EXAMPLES / name)
        assert "user-service" in config.services


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(("text", "field", "value"), [
    (GOOD.replace('name: "staging"', 'name: "../../victim"'),
     "environment_management.environments[0].name", "'../../victim'"),
    (GOOD.replace("user-service:", "User_Service:"), "services.User_Service", "'User_Service'"),
    (GOOD.replace("[v1.2.0, v1.3.0]", '[v1.2.0, "v1.3.0/../../x"]'),
     "services.user-service.versions[1]", "'v1.3.0/../../x'"),
    (GOOD.replace("    versions: [v1.2.0, v1.3.0]\n", "").replace("v1.3.0: {", '"bad version": {'),
     "services.user-service.simulate.'bad version'", "'bad version'"),
])
def test_names_are_checked_when_the_config_loads(tmp_path: Path, text: str, field: str, value: str) -> None:
    error = refused(tmp_path, text)
    assert error.field == field
    assert "name must be" in error.detail and error.detail.endswith(f"got {value}")


def test_an_environment_name_error_reads_as_one_sentence(tmp_path: Path) -> None:
    error = refused(tmp_path, GOOD.replace('name: "staging"', 'name: "../../victim"'))
    assert str(error) == (
        f"{tmp_path / 'safeship.yaml'}: environment_management.environments[0].name: environment name must be "
        "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters, got '../../victim'")


def test_a_huge_version_is_refused_with_a_short_message(tmp_path: Path) -> None:
    error = refused(tmp_path, GOOD.replace("[v1.2.0, v1.3.0]", "[v1.2.0, v" + "9" * 100_000 + "]"))
    assert error.field == "services.user-service.versions[1]"
    assert len(str(error)) < 400 and "100001 characters" in str(error)


def test_secret_and_variable_names_cannot_be_paths(tmp_path: Path) -> None:
    error = refused(tmp_path, GOOD + "    secrets: [../../etc/passwd]\n")
    assert error.field == "services.user-service.secrets[0]" and "'../../etc/passwd'" in error.detail
    error = refused(tmp_path, GOOD.replace("platform: sim", "platform: sim\n      config_maps: {app: {'../x': 'y'}}"))
    assert error.field == "environment_management.environments[0].config_maps.app" and "'../x'" in error.detail


# ---------------------------------------------------------------- YAML


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    text = GOOD + "  user-service:\n    replicas: 3\n"
    error = refused(tmp_path, text)
    assert str(error) == f"{tmp_path / 'safeship.yaml'}: services.user-service: key appears twice (lines 6 and 11)"


def test_a_duplicate_key_inside_a_list_item_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, GOOD.replace("platform: sim", "platform: sim\n      platform: local"))
    assert error.field == "environment_management.environments[0].platform"
    assert error.detail == "key appears twice (lines 4 and 5)"


def test_a_duplicate_key_in_a_scenario_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text("name: a\nexpect: promote\nname: b\n")
    with pytest.raises(ConfigError, match=r"name: key appears twice \(lines 1 and 3\)"):
        load_scenario(path)


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text("services:\n  a: &base {replicas: 2}\n  b:\n    <<: *base\n    replicas: 3\n")
    assert load_config(path).services["b"].replicas == 3


def test_a_file_that_is_not_utf8_is_one_sentence(tmp_path: Path) -> None:
    error = refused(tmp_path, b"services:\n  caf\xe9: {}\n")
    assert error.detail == "not UTF-8 text (byte 0xe9 at offset 15)"


@pytest.mark.parametrize(("text", "expected"), [
    ("services: [\n", "line"),
    ("services:\n\tweb: {}\n", "line 2"),
    ("a: \x07\n", "U+0007 at offset 3"),
    ("--- {}\n--- {}\n", "single document"),
    ("x: !!python/object:os.system {}\n", "line 1"),
    ("x: 2024-02-30\n", "looks like a date but is not one"),
    ("x: " + "9" * 5000 + "\n", "too many digits"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "levels deep"),
])
def test_yaml_problems_are_one_sentence(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refused(tmp_path, text).detail


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    error = refused(tmp_path, "\n".join(lines) + "\n")
    assert "aliases are expanded" in error.detail


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "string"), ("3\n", "number")])
def test_a_top_level_that_is_not_a_mapping_is_one_sentence(tmp_path: Path, text: str, kind: str) -> None:
    assert refused(tmp_path, text).detail == f"the top level must be a mapping of sections, got a {kind}"


def test_base_60_numbers_are_strings(tmp_path: Path) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text("environment_management:\n  environments:\n    - name: prod\n      freeze_windows:\n"
                    "        - {name: lunch, start: 12:30, end: 13:30}\n")
    window = load_config(path).environment_management.environments[0].freeze_windows[0]
    assert (window.start, window.end) == ("12:30", "13:30")


def test_a_missing_config_says_how_to_write_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "safeship.yaml")
    assert str(caught.value) == (f"{tmp_path / 'safeship.yaml'}: file not found; run `safeship init` to write "
                                 "a starter safeship.yaml")


def test_a_missing_scenario_does_not_mention_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_scenario(tmp_path / "nope.yaml")
    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: file not found"
    with pytest.raises(ConfigError, match=r"file not found$"):
        read_yaml(tmp_path / "nope.yaml")


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a directory, not a file$"):
        load_config(tmp_path)


# ---------------------------------------------------------------- nonsense values


@pytest.mark.parametrize(("text", "field", "message"), [
    (GOOD.replace("replicas: 2", "replicas: true"), "services.user-service.replicas", "must be a number, got true"),
    (GOOD.replace("replicas: 2", "replicas: 99999999999"), "services.user-service.replicas",
     "less than or equal to 10000"),
    ("intelligent_deployment:\n  strategies:\n    canary:\n      step_duration: \"0s\"\n",
     "intelligent_deployment.strategies.canary.step_duration", "must be at least 1ms, got '0s'"),
    ("intelligent_deployment:\n  strategies:\n    canary:\n      step_duration: \"99999999999h\"\n",
     "intelligent_deployment.strategies.canary.step_duration", "must be at most 7 days (604800s), got '99999999999h'"),
    ("intelligent_deployment:\n  rollback:\n    stable_after: \"999d\"\n",
     "intelligent_deployment.rollback.stable_after", "must be at most 30 days"),
    ("intelligent_deployment:\n  health_checks:\n    readiness: {interval: 0}\n",
     "intelligent_deployment.health_checks.readiness.interval", "must be at least 1ms"),
    ("intelligent_deployment:\n  strategies:\n    canary:\n      traffic_percentages: [true, 100]\n",
     "intelligent_deployment.strategies.canary.traffic_percentages[0]", "must be a number, got true"),
    ("intelligent_deployment:\n  strategies:\n    canary:\n      traffic_percentages: [-5, 100]\n",
     "intelligent_deployment.strategies.canary.traffic_percentages", "each weight must be in 1..100, got -5"),
    ("intelligent_deployment:\n  strategies:\n    canary:\n      traffic_percentages: [50, 150]\n",
     "intelligent_deployment.strategies.canary.traffic_percentages", "each weight must be in 1..100, got 150"),
    ("intelligent_deployment:\n  rollback:\n    triggers:\n      - {type: error_rate_threshold, threshold: .nan}\n",
     "intelligent_deployment.rollback.triggers[0].threshold", "must be a finite number"),
    ("intelligent_deployment:\n  rollback:\n    triggers:\n      - {type: custom_metric, metric: m, threshold: true}\n",
     "intelligent_deployment.rollback.triggers[0].threshold", "must be a number, got true"),
    (GOOD.replace("{error_rate: 0.2}", "{error_rate: 0.2}\n      v9.9.9: {ready: false}"),
     "services.user-service.simulate.v9.9.9", "not in services.user-service.versions"),
    ("environment_management:\n  environments:\n    - {name: prod, resource_quotas: {cpu: '-2'}}\n",
     "environment_management.environments[0].resource_quotas.cpu", "expected cpu cores"),
    ("environment_management:\n  environments:\n    - name: prod\n      freeze_windows: [{timezone: America}]\n",
     "environment_management.environments[0].freeze_windows[0].timezone", "unknown time zone 'America'"),
])
def test_nonsense_values_are_refused(tmp_path: Path, text: str, field: str, message: str) -> None:
    error = refused(tmp_path, text)
    assert error.field == field and message in error.detail, str(error)


def test_an_empty_trigger_list_is_refused_and_absence_gives_the_defaults(tmp_path: Path) -> None:
    error = refused(tmp_path, "intelligent_deployment:\n  rollback:\n    triggers: []\n")
    assert error.field == "intelligent_deployment.rollback.triggers"
    assert "unguarded" in error.detail and "remove the key" in error.detail
    path = tmp_path / "safeship.yaml"
    path.write_text("intelligent_deployment:\n  rollback:\n    auto_rollback: true\n")
    kinds = [t.type for t in load_config(path).intelligent_deployment.rollback.triggers]
    assert kinds == ["health_check_failure", "error_rate_threshold", "response_time_threshold"]


def test_durations_survive_a_round_trip_through_the_store_format(tmp_path: Path) -> None:
    path = tmp_path / "rollback.yaml"
    path.write_text("rollback_timeout: 7500\ntriggers:\n  - {type: health_check_failure, timeout: 0.0015}\n")
    settings = load_rollback_settings(path)
    again = type(settings).model_validate(settings.model_dump(mode="json", by_alias=True))
    assert again.rollback_timeout == 7500 and again.triggers[0].timeout == pytest.approx(0.0015)


def test_every_error_is_a_safeship_error_for_a_scenario(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    for text in ("", "[1]\n", "name: x\nexpect: promote\nseed: -1\n", "name: x\nexpect: promote\nduration_s: 1e400\n"):
        path.write_text(text)
        with pytest.raises(SafeshipError) as caught:
            load_scenario(path)
        assert "\n" not in str(caught.value)


def test_an_integer_duration_too_large_for_a_float_is_refused_in_one_sentence() -> None:
    # found by the config fuzzer: float(10**400) raised OverflowError, a crash instead of exit 2
    import pytest

    from safeship.config.durations import parse_duration, parse_positive_duration, parse_step_duration

    for parse in (parse_duration, parse_positive_duration, parse_step_duration):
        with pytest.raises(ValueError, match="must be at most"):
            parse(10**400)
