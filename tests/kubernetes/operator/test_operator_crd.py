"""The Release CRD generated from the pydantic models: structural, complete, and a sample Release
(and a bad one) judged by its schema as the API server would judge it."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml

from safeship.operator import release as rel
from safeship.operator.crd import release_crd, structural_problems

SAMPLE = yaml.safe_load("""
apiVersion: safeship.dev/v1alpha1
kind: Release
metadata: {name: user-service, namespace: prod}
spec:
  service: user-service
  image: registry.example/user-service:{version}
  version: v1.3.0
  strategy: canary
  replicas: 3
  resources: {cpu: 250m, memory: 256Mi}
  env: {LOG_LEVEL: info}
  pod:
    min_available: 50%
    tolerations: [{key: dedicated, operator: Equal, value: web, effect: NoSchedule}]
    affinity: {podAntiAffinity: {preferredDuringSchedulingIgnoredDuringExecution: []}}
  rollback:
    triggers:
      - {type: error_rate_threshold, threshold: 0.05, duration: 60s}
      - {type: health_check_failure, timeout: 2m}
  analysis: {error_tolerance: 1.5, interval: 2s}
  strategies: {canary: {traffic_percentages: [10, 50, 100], step_duration: 30s}}
""")


def crd_json_schema(node: Any) -> Any:
    """The OpenAPI v3 structural schema as JSON Schema: nullable, int-or-string, and unknown fields
    refused where the API server's strict field validation refuses them."""
    if isinstance(node, list):
        return [crd_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: crd_json_schema(v) if k in ("items", "additionalProperties", "anyOf", "not") else v
           for k, v in node.items() if k != "description" and not k.startswith("x-kubernetes-")}
    if "properties" in node:
        out["properties"] = {k: crd_json_schema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    crd = release_crd()
    schema = crd_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_crd_is_complete_and_its_schema_structural() -> None:
    crd = release_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "releases.safeship.dev"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["plural"], spec["names"]["kind"]) == \
        ("safeship.dev", "Namespaced", "releases", "Release")
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Service": ".spec.service", "Stable": ".status.stableVersion",
                       "Candidate": ".status.candidate", "Phase": ".status.phase",
                       "Weight": ".status.candidateWeight", "Age": ".metadata.creationTimestamp"}
    schema = version["schema"]["openAPIV3Schema"]
    assert structural_problems(schema) == []
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "default:" not in text and "const:" not in text
    status = schema["properties"]["status"]["properties"]
    for field in ("phase", "step", "weights", "stableVersion", "candidate", "message", "conditions",
                  "observedGeneration", "handled", "leaderEpoch"):
        assert field in status, field
    condition = status["conditions"]["items"]
    assert set(condition["properties"]["type"]["enum"]) == set(rel.CONDITION_TYPES)
    # preserve-unknown-fields only on the free-form pod fields written as Kubernetes writes them
    preserved = [line for line in text.splitlines() if "preserve-unknown-fields" in line]
    assert len(preserved) == 3, preserved


def test_the_checker_finds_what_is_not_structural() -> None:
    bad = {"type": "object", "properties": {
        "a": {"$ref": "#/x"},
        "b": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "c": {"type": "array"},
        "d": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": {"type": "string"}},
    }}
    problems = "\n".join(structural_problems(bad))
    for expected in ("properties.a: $ref", "properties.a: no type", "properties.b: no type",
                     "type inside a junctor", "properties.c: an array without items",
                     "properties and additionalProperties together"):
        assert expected in problems, problems


def test_a_sample_release_validates_and_its_model_reads_it(validator: jsonschema.Draft202012Validator) -> None:
    assert list(validator.iter_errors(SAMPLE)) == []
    release = rel.Release.model_validate(SAMPLE)
    assert release.spec.strategies is not None
    assert release.spec.strategies.canary.traffic_percentages == [10, 50, 100]
    assert release.spec.resources.memory == 256.0 and release.spec.resources.cpu == 0.25
    status = rel.ReleaseStatus(phase="progressing", weights={"v1.2.0": 75, "v1.3.0": 25}, candidateWeight=25,
                               conditions=[rel.Condition(type="Progressing", status="True", reason="StepRunning",
                                                         lastTransitionTime="2026-01-01T00:00:00Z")])
    with_status = {**SAMPLE, "status": status.model_dump(mode="json")}
    assert list(validator.iter_errors(with_status)) == []


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("spec", "replicas"), "three", "is not of type 'integer'"),
    (("spec", "strategy"), "big-bang", "is not one of"),
    (("spec", "unknown_field"), 1, "Additional properties"),
    (("spec", "analysis", "error_tolerance"), 0.5, "less than the minimum"),
    (("spec", "rollback", "triggers"), [{"threshold": 0.1}], "'type' is a required property"),
    (("spec", "resources", "cpu"), 0.5, "is not valid under any of the given schemas"),
])
def test_the_schema_refuses_what_safeship_refuses(validator: jsonschema.Draft202012Validator,
                                                  path: tuple[str, ...], value: Any, expected: str) -> None:
    bad = copy.deepcopy(SAMPLE)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    messages = [e.message for e in validator.iter_errors(bad)]
    assert any(expected in m for m in messages), messages
