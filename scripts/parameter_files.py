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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scripts.template_values import Evaluator, Unevaluable, parameter_values


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
        if name == "HostedZoneId" and values[name].startswith(ZONE_PREFIX):
            found.append(f"{name}: drop the {ZONE_PREFIX} prefix that Route 53 shows, give the ID alone: "
                         f"{values[name][len(ZONE_PREFIX):]}")
    if not found:
        found += _rule_problems(template, parameter_values(template, values), region)
    return found


# Values of the example files (parameters/*.json) that no real deployment has: the
# domains RFC 2606 reserves for examples, and the examples' made-up hosted zone ID.
EXAMPLE_DOMAIN = re.compile(r"(^|.*\.)example\.(com|net|org)$")
EXAMPLE_ZONE_ID = "Z0123456789ABCDEFGHIJ"
# What Route 53's console and API show before a zone's ID.
ZONE_PREFIX = "/hostedzone/"


def example_values(values: Mapping[str, str]) -> list[str]:
    """The values left as in the example files, each with what to put instead."""
    found = []
    if EXAMPLE_DOMAIN.match(values.get("DomainName", "")):
        found.append(f"DomainName={values['DomainName']} is an example domain: put your own")
    if values.get("HostedZoneId") == EXAMPLE_ZONE_ID:
        found.append(f"HostedZoneId={EXAMPLE_ZONE_ID} is the examples' made-up zone: put your domain's "
                     "(aws route53 list-hosted-zones-by-name --dns-name YOUR.DOMAIN)")
    for key in ("AlertEmail", "MailFromAddress"):
        if EXAMPLE_DOMAIN.match(values.get(key, "").rpartition("@")[2]):
            found.append(f"{key}={values[key]} is an example address: alerts would go nowhere")
    return found


def _constraint_problems(spec: Mapping[str, Any], value: str) -> list[str]:
    found = []
    # A CommaDelimitedList's every member must be allowed.
    members = value.split(",") if spec.get("Type") == "CommaDelimitedList" else [value]
    if "AllowedValues" in spec and not set(members) <= {str(v) for v in spec["AllowedValues"]}:
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
    return [problem for problem, _ in _judge_rules(template, values, region) if problem]


def unchecked_rules(template: Mapping[str, Any], values: Mapping[str, str],
                    region: str | None = None) -> list[str]:
    """The Rules this module could not judge for these values, each with the reason;
    CloudFormation still checks them when the stack is created or updated."""
    return [reason for _, reason in _judge_rules(template, parameter_values(template, values), region)
            if reason]


def _judge_rules(template: Mapping[str, Any], values: Mapping[str, str],
                 region: str | None) -> list[tuple[str, str]]:
    """(problem, why unchecked) per broken or unjudged assertion; a rule is judged only when
    every function and value it uses is known here (strict evaluation), never assumed to hold."""
    evaluator = Evaluator(template, {**values, **({"AWS::Region": region} if region else {})}, strict=True)
    found = []
    for name, rule in template.get("Rules", {}).items():
        try:
            if "RuleCondition" in rule and not evaluator.value(rule["RuleCondition"]):
                continue
            for assertion in rule.get("Assertions", []):
                if not evaluator.value(assertion["Assert"]):
                    found.append((f"rule {name}: {assertion.get('AssertDescription', 'does not hold')}", ""))
        except Unevaluable as error:
            found.append(("", f"rule {name} not checked here ({error}); CloudFormation checks it"))
    return found


def load(path: Path, template: Mapping[str, Any], region: str | None = None,
         previous: Callable[[], Mapping[str, str]] | None = None) -> dict[str, str]:
    """Read and check a parameter file; ParameterFileError lists every problem.

    On an update, a key the file leaves out keeps the stack's current value: `previous`
    gives those values (asked only when the file alone does not fit), and the file is
    checked as the stack would be after the update.
    """
    values = read(path)
    found = problems(template, values, region)
    if found and previous is not None:
        kept = {key: value for key, value in previous().items()
                if key not in values and key in template.get("Parameters", {})}
        if kept:
            found = problems(template, {**kept, **values}, region)
    if found:
        lines = [f"{path} does not fit the template:", *(f"  {p}" for p in found)]
        raise ParameterFileError("\n".join(lines))
    return values
