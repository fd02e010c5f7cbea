"""The Release CustomResourceDefinition, generated from the pydantic models in `release.py`.

`release_crd()` is a complete `apiextensions.k8s.io/v1` CustomResourceDefinition whose
`openAPIV3Schema` is structural, as the API server requires of a v1 CRD:

- every `$ref` is inlined; every node names its `type`, except int-or-string nodes
  (`x-kubernetes-int-or-string: true` with the `anyOf: [integer, string]` the API server allows);
- `Optional[X]` is X with `nullable: true`; a discriminated union (the rollback triggers) is one
  object holding every variant's fields, its discriminator an enum of the variants' names;
- a duration (`"30s"` or a whole number of seconds) and a quantity (`cpu: 500m`, `memory: 256Mi`)
  are int-or-string: the API server refuses a fractional number there, as it does for a Pod's
  resources (write `"1.5s"` or `"0.5"`);
- `dict[str, Any]` fields (pod affinity, tolerations, written as Kubernetes writes them) keep
  their content with `x-kubernetes-preserve-unknown-fields`; nothing else does;
- no junctor (`anyOf`, `oneOf`, `allOf`, `not`) carries a `type`, `description`, `default`,
  `nullable` or `additionalProperties`, and no `default` is published: pydantic fills defaults
  when the operator reads a Release, so the stored object holds what its author wrote;
- pydantic's exclusive bounds (`gt`, `lt`) become inclusive `minimum`/`maximum` (the API server's
  OpenAPI v3.0 spells exclusivity as a boolean flag that JSON Schema 2020-12 readers would misread);
  the operator still refuses the boundary value itself with the model's own sentence.

`structural_problems(schema)` checks those rules; the tests run it on the generated schema.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from safeship.operator import release as rel

JsonObj = dict[str, Any]

# Fields whose values are Kubernetes quantities or durations: an integer or a string.
_QUANTITIES = {("ResourceRequirements", "cpu"), ("ResourceRequirements", "memory"), ("VolumeConfig", "size")}
_DROPPED = {"title", "default", "discriminator", "examples", "ge", "le", "gt", "lt", "const",
            "exclusiveMinimum", "exclusiveMaximum", "additionalProperties", "$defs"}
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _resolve(node: Any, defs: JsonObj) -> Any:
    """`node` with `$ref`s replaced by (copies of) what they name."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[str(node["$ref"]).rsplit("/", 1)[-1]])
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **rest}, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _is_null(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "null"


def _scalar_types(branches: list[Any]) -> set[str]:
    return {str(b.get("type")) for b in branches if isinstance(b, dict)}


def _merge_variants(variants: list[JsonObj]) -> JsonObj:
    """One object schema holding every variant's fields (a discriminated union, structurally)."""
    properties: JsonObj = {}
    required: set[str] | None = None
    for variant in variants:
        for name, sub in (variant.get("properties") or {}).items():
            if "const" in sub:
                sub = {**{k: v for k, v in sub.items() if k != "const"}, "enum": [sub["const"]]}
            if name in properties and "enum" in properties[name] and "enum" in sub:
                properties[name]["enum"] = sorted({*properties[name]["enum"], *sub["enum"]})
            elif name not in properties:
                properties[name] = sub
        wanted = set(variant.get("required") or [])
        required = wanted if required is None else required & wanted
    merged: JsonObj = {"type": "object", "properties": properties}
    if required:
        merged["required"] = sorted(required)
    return merged


def _structural(node: Any, owner: str = "", field: str = "") -> JsonObj:
    """One JSON-schema node (refs resolved) as a structural OpenAPI v3 node."""
    if not isinstance(node, dict):
        return {"x-kubernetes-preserve-unknown-fields": True}
    node = dict(node)
    description = node.get("description")
    if "const" in node:
        node["enum"] = [node["const"]]
    if "exclusiveMinimum" in node and "minimum" not in node:
        node["minimum"] = node["exclusiveMinimum"]
    if "exclusiveMaximum" in node and "maximum" not in node:
        node["maximum"] = node["exclusiveMaximum"]
    if "ge" in node and "minimum" not in node:
        node["minimum"] = node["ge"]
    if "le" in node and "maximum" not in node:
        node["maximum"] = node["le"]

    for junctor in ("anyOf", "oneOf"):
        branches = node.get(junctor)
        if not isinstance(branches, list):
            continue
        nullable = any(_is_null(b) for b in branches)
        rest = [b for b in branches if not _is_null(b)]
        if len(rest) == 1:
            inner = _structural({**rest[0], **{k: v for k, v in node.items() if k not in _JUNCTORS}}, owner, field)
        elif _scalar_types(rest) <= {"integer", "number", "string"} and "string" in _scalar_types(rest):
            inner = {"x-kubernetes-int-or-string": True, "anyOf": copy.deepcopy(_INT_OR_STRING)}
        elif all(isinstance(b, dict) and b.get("type") == "object" for b in rest):
            inner = _structural(_merge_variants(rest), owner, field)
        else:
            inner = {"x-kubernetes-preserve-unknown-fields": True}
        if description and "description" not in inner:
            inner["description"] = description
        if nullable:
            inner["nullable"] = True
        return inner

    if (owner, field) in _QUANTITIES:
        out: JsonObj = {"x-kubernetes-int-or-string": True, "anyOf": copy.deepcopy(_INT_OR_STRING)}
        if description:
            out["description"] = description
        return out

    kind = node.get("type")
    out = {k: v for k, v in node.items() if k not in _DROPPED and k not in ("properties", "items", "required")}
    if kind == "object":
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        if properties:
            title = str(node.get("title", ""))
            out["properties"] = {name: _structural(sub, title, name) for name, sub in properties.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra)
        else:  # a free-form mapping (dict[str, Any]), written as Kubernetes writes it
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _structural(node.get("items") or {})
    elif kind is None:
        return {"x-kubernetes-preserve-unknown-fields": True, **({"description": description} if description else {})}
    return out


def model_schema(model: type[Any]) -> JsonObj:
    """The structural OpenAPI v3 schema of a pydantic model."""
    raw = model.model_json_schema(mode="validation")
    resolved = _resolve({k: v for k, v in raw.items() if k != "$defs"}, raw.get("$defs") or {})
    return _structural(resolved)


def release_schema() -> JsonObj:
    """The openAPIV3Schema of a Release."""
    spec = model_schema(rel.ReleaseSpec)
    spec["description"] = "What to run: the service's settings as in safeship.yaml's services.<name>, " \
                          "and the version to roll out (a change of image or version starts a deployment)."
    status = model_schema(rel.ReleaseStatus)
    status["description"] = "Written by the operator (the Lease holder) only."
    return {
        "type": "object",
        "description": "A service's release, rolled out by safeship (canary, blue-green, rolling or recreate) "
                       "with automatic rollback on its analysis.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


PRINTER_COLUMNS: list[JsonObj] = [
    {"name": "Service", "type": "string", "jsonPath": ".spec.service"},
    {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
    {"name": "Candidate", "type": "string", "jsonPath": ".status.candidate"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.candidateWeight",
     "description": "percent of traffic on the candidate"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def release_crd() -> JsonObj:
    """The complete CustomResourceDefinition of `releases.safeship.dev`."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": rel.CRD_NAME,
            "labels": {"app.kubernetes.io/name": "safeship", "app.kubernetes.io/component": "operator"},
        },
        "spec": {
            "group": rel.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": rel.KIND,
                "listKind": f"{rel.KIND}List",
                "plural": rel.PLURAL,
                "singular": rel.SINGULAR,
                "shortNames": list(rel.SHORT_NAMES),
                "categories": ["safeship"],
            },
            "versions": [{
                "name": rel.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                "schema": {"openAPIV3Schema": release_schema()},
            }],
        },
    }


# ------------------------------------------------------------------ structural rules

_SCHEMA_KEYS = {"type", "format", "title", "description", "default", "maximum", "minimum", "maxLength",
                "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "enum",
                "maxProperties", "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not",
                "properties", "additionalProperties", "nullable", "example", "externalDocs",
                "exclusiveMaximum", "exclusiveMinimum", "x-kubernetes-preserve-unknown-fields",
                "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys",
                "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations"}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_FORBIDDEN_IN_JUNCTORS = {"description", "type", "default", "additionalProperties", "nullable"}


def _walk(node: Any, path: str) -> Iterator[tuple[str, JsonObj]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.properties.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.additionalProperties")


def _junctor_problems(node: Any, path: str, outer: JsonObj) -> list[str]:
    problems: list[str] = []
    if not isinstance(node, dict):
        return problems
    int_or_string = bool(outer.get("x-kubernetes-int-or-string"))
    for key in _FORBIDDEN_IN_JUNCTORS & node.keys():
        if key == "type" and int_or_string and node.get("type") in ("integer", "string"):
            continue
        problems.append(f"{path}: {key} inside a junctor")
    for name in (node.get("properties") or {}):
        if name not in (outer.get("properties") or {}):
            problems.append(f"{path}: property {name} is not specified outside the junctor")
    for junctor in _JUNCTORS:
        subs = node.get(junctor)
        for i, sub in enumerate(subs if isinstance(subs, list) else [subs] if subs is not None else []):
            problems += _junctor_problems(sub, f"{path}.{junctor}[{i}]", outer)
    return problems


def structural_problems(schema: JsonObj) -> list[str]:
    """What keeps `schema` from being a structural schema (an empty list when it is one)."""
    problems: list[str] = []
    for path, node in _walk(schema, "openAPIV3Schema"):
        problems += [f"{path}: unknown keyword {key}" for key in node.keys() - _SCHEMA_KEYS]
        if "$ref" in node:
            problems.append(f"{path}: $ref")
        kind = node.get("type")
        exempt = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        if kind is None and not exempt:
            problems.append(f"{path}: no type")
        if kind is not None and kind not in _TYPES:
            problems.append(f"{path}: type {kind!r} is not one of {sorted(_TYPES)}")
        if kind is not None and node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: type with x-kubernetes-int-or-string")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if "properties" in node and kind != "object":
            problems.append(f"{path}: properties on a non-object")
        if "items" in node and kind != "array":
            problems.append(f"{path}: items on a non-array")
        if kind == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: an array without items")
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node and not isinstance(node[bound], bool):
                problems.append(f"{path}: {bound} must be a boolean in OpenAPI v3.0")
        typed = kind not in (None, "object") or bool(node.get("properties"))
        if node.get("x-kubernetes-preserve-unknown-fields") and typed:
            problems.append(f"{path}: x-kubernetes-preserve-unknown-fields on a typed node with fields")
        for junctor in _JUNCTORS:
            subs = node.get(junctor)
            if subs is None:
                continue
            for i, sub in enumerate(subs if isinstance(subs, list) else [subs]):
                problems += _junctor_problems(sub, f"{path}.{junctor}[{i}]", node)
        if node.get("x-kubernetes-int-or-string"):
            branches = node.get("anyOf")
            if branches is not None and branches != _INT_OR_STRING:
                problems.append(f"{path}: x-kubernetes-int-or-string with anyOf other than [integer, string]")
    if schema.get("type") != "object":
        problems.append("openAPIV3Schema: the root must be an object")
    for name in ("metadata",):
        meta = (schema.get("properties") or {}).get(name)
        if meta is not None and set(meta) - {"type", "description"}:
            problems.append(f"openAPIV3Schema.properties.{name}: only type and description are allowed")
    return problems
