"""AWS-CLI parameter files (parameters/<env>.json) checked against a built template.

The format is the one `aws cloudformation create-stack --parameters file://...` and
`deploy --parameter-overrides file://...` read: a list of {"ParameterKey",
"ParameterValue"} objects. A file is accepted when every key is a parameter of the
template, no key repeats, every value meets its parameter's constraints, every
parameter without a default has a value, and the template's Rules hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scripts.template_values import Evaluator, parameter_values


class ParameterFileError(ValueError):
    """A parameter file that CloudFormation would refuse (or that is not one at all)."""


def read(path: Path) -> dict[str, str]:
    """The file's values by key; ParameterFileError when it is not a parameter file."""
    try:
        entries = json.loads(path.read_text())
    except OSError as error:
        raise ParameterFileError(f"{path}: cannot read: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ParameterFileError(f"{path}: not JSON: {error}") from None
    if not isinstance(entries, list):
        raise ParameterFileError(f"{path}: expected a list of ParameterKey/ParameterValue objects")
    values: dict[str, str] = {}
    for entry in entries:
        if not (isinstance(entry, dict) and set(entry) == {"ParameterKey", "ParameterValue"}
                and all(isinstance(v, str) for v in entry.values())):
            raise ParameterFileError(f"{path}: each entry must be "
                                     '{"ParameterKey": "...", "ParameterValue": "..."} with string values')
        key = entry["ParameterKey"]
        if key in values:
            raise ParameterFileError(f"{path}: {key} is given twice")
        values[key] = entry["ParameterValue"]
    return values


def problems(template: Mapping[str, Any], values: Mapping[str, str], region: str | None = None) -> list[str]:
    """What CloudFormation would reject in these values; empty when they are fine.

    Rules that depend on the stack's region are checked only when the region is known.
    """
    declared: dict[str, dict[str, Any]] = template.get("Parameters", {})
    found = [f"{key} is not a parameter of the template" for key in values if key not in declared]
    for name, spec in declared.items():
        if name not in values:
            if "Default" not in spec:
                found.append(f"{name} is required (it has no default)")
            continue
        found += [f"{name}={values[name]!r}: {p}" for p in _constraint_problems(spec, values[name])]
    if not found:
        found += _rule_problems(template, parameter_values(template, values), region)
    return found


def _constraint_problems(spec: Mapping[str, Any], value: str) -> list[str]:
    found = []
    if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
        found.append(f"not one of {', '.join(map(str, spec['AllowedValues']))}")
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        found.append(spec.get("ConstraintDescription") or f"does not match {spec['AllowedPattern']}")
    if "MinLength" in spec and len(value) < int(spec["MinLength"]):
        found.append(f"shorter than {spec['MinLength']}")
    if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
        found.append(f"longer than {spec['MaxLength']}")
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            return [*found, "not a number"]
        if "MinValue" in spec and number < float(spec["MinValue"]):
            found.append(f"below the minimum {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            found.append(f"above the maximum {spec['MaxValue']}")
    return found


def _rule_problems(template: Mapping[str, Any], values: Mapping[str, str], region: str | None) -> list[str]:
    evaluator = Evaluator(template, {**values, **({"AWS::Region": region} if region else {})})
    found = []
    for name, rule in template.get("Rules", {}).items():
        if region is None and '"AWS::Region"' in json.dumps(rule):
            continue  # CloudFormation checks it in the stack's region
        if "RuleCondition" in rule and not evaluator.value(rule["RuleCondition"]):
            continue
        for assertion in rule.get("Assertions", []):
            if not evaluator.value(assertion["Assert"]):
                found.append(f"rule {name}: {assertion.get('AssertDescription', 'does not hold')}")
    return found


def load(path: Path, template: Mapping[str, Any], region: str | None = None) -> dict[str, str]:
    """Read and check a parameter file; ParameterFileError lists every problem."""
    values = read(path)
    found = problems(template, values, region)
    if found:
        lines = [f"{path} does not fit the template:", *(f"  {p}" for p in found)]
        raise ParameterFileError("\n".join(lines))
    return values
