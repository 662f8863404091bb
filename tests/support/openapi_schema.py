"""Validating an object against a CRD's ``openAPIV3Schema`` as kube-apiserver does on create.

There is no kube-apiserver on the test machines. This follows the structural-schema rules the API
server applies (k8s.io/apiextensions-apiserver, "Validation" and "Pruning" in the CRD docs) for the
keywords the CRDs in tests/samples/readiness/ use: ``type``, ``properties`` (an unknown field is an
error, as with ``kubectl apply --validate=strict``, unless ``x-kubernetes-preserve-unknown-fields``),
``additionalProperties``, ``required``, ``enum``, ``items``, ``minItems``/``maxItems``,
``minLength``/``maxLength``, ``format: date-time``, ``x-kubernetes-list-type: map`` (unique keys)
and ``x-kubernetes-validations``. CEL cannot run here: each rule is looked up in ``CEL_RULES`` (the
rule text, translated to Python by hand) and a rule not in the table is an error, so a CRD that gains
a rule fails the tests until the rule is translated. Transition rules (those naming ``oldSelf``) do
not apply on create and are skipped, as the API server does.
"""

import re
from datetime import datetime
from typing import Any, Callable, Dict, List, Mapping, Sequence

_NAME_PART = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
CEL_RULES: Dict[str, Callable[[Any], bool]] = {
    "self.key.startsWith('readiness.k8s.io/')": lambda s: s["key"].startswith("readiness.k8s.io/"),
    "self.key.size() <= 253": lambda s: len(s["key"]) <= 253,
    "size(self.key.split('/')) == 2": lambda s: len(s["key"].split("/")) == 2,
    "size(self.key.split('/')[1]) > 0 && size(self.key.split('/')[1]) <= 63":
        lambda s: 0 < len(s["key"].split("/")[1]) <= 63,
    f"self.key.split('/')[1].matches('{_NAME_PART}')": lambda s: re.search(_NAME_PART, s["key"].split("/")[1]),
    "!has(self.value) || self.value.size() <= 63": lambda s: "value" not in s or len(s["value"]) <= 63,
    "self.effect in ['NoSchedule', 'PreferNoSchedule', 'NoExecute']":
        lambda s: s["effect"] in ("NoSchedule", "PreferNoSchedule", "NoExecute"),
}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}


def validate(schema: Mapping[str, Any], value: Any, path: str = "", *, opaque: Sequence[str] = ()) -> List[str]:
    """Errors (``path: what``), empty when ``value`` is valid. ``opaque``: paths not looked into."""
    if path in opaque:
        return []
    errors: List[str] = []
    kind = schema.get("type")
    if kind is not None:
        python = _TYPES[kind]
        if not isinstance(value, python) or (kind in ("integer", "number") and isinstance(value, bool)):
            return [f"{path or '.'}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: length {len(value)} out of bounds")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                errors.append(f"{path}: not a date-time")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items out of bounds")
        keys = schema.get("x-kubernetes-list-map-keys")
        if schema.get("x-kubernetes-list-type") == "map" and keys:
            seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
            if len(seen) != len(set(seen)):
                errors.append(f"{path}: duplicate map keys {keys}")
        for i, item in enumerate(value):
            errors += validate(schema.get("items", {}), item, f"{path}[{i}]", opaque=opaque)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        for key, item in value.items():
            where = f"{path}.{key}"
            if key in props:
                errors += validate(props[key], item, where, opaque=opaque)
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(schema["additionalProperties"], item, where, opaque=opaque)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and (
                    props or schema.get("additionalProperties") is False):
                errors.append(f"{where}: unknown field")
    if not errors:
        for check in schema.get("x-kubernetes-validations", []):
            rule = check["rule"]
            if "oldSelf" in rule:
                continue
            if rule not in CEL_RULES:
                errors.append(f"{path}: rule not translated for the tests: {rule}")
            else:
                try:
                    ok = bool(CEL_RULES[rule](value))
                except (IndexError, KeyError, TypeError):  # CEL: an evaluation error fails the rule
                    ok = False
                if not ok:
                    errors.append(f"{path}: {check.get('message', rule)}")
    return errors


def crd_schema(crd: Mapping[str, Any], version: str) -> Mapping[str, Any]:
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return dict(served["schema"]["openAPIV3Schema"])
