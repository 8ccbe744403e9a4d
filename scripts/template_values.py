"""Evaluate a built template's parameters, conditions and simple intrinsics for given values.

Just enough of CloudFormation's semantics (Ref to a parameter, Fn::Equals, Not, And,
Or, If, FindInMap, Condition, Select, Split, Join, Sub of known values, and the rule
functions Contains, EachMemberEquals and EachMemberIn) to tell which resources a
parameter set creates, what a property resolves to and whether a template Rule holds;
anything else evaluates to None, or, for a Rule (`Evaluator.strict`), raises
Unevaluable so that no rule is called checked that was not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Template = Mapping[str, Any]

# Every function CloudFormation allows in a Rule (User Guide, "Rule functions") that
# this module evaluates. Fn::ValueOf, Fn::ValueOfAll and Fn::RefAll read the account
# (a parameter's AWS-specific attributes, every VPC...), which only CloudFormation can.
RULE_FUNCTIONS = frozenset({"Ref", "Fn::And", "Fn::Or", "Fn::Not", "Fn::Equals", "Fn::Contains",
                            "Fn::EachMemberEquals", "Fn::EachMemberIn"})


class Unevaluable(ValueError):
    """An expression uses a function this module cannot evaluate (named in the message)."""


def parameter_values(template: Template, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The template's defaults, overridden by the given values (all as strings)."""
    values = {name: str(spec["Default"]) for name, spec in template.get("Parameters", {}).items()
              if "Default" in spec}
    values.update(given or {})
    return values


class Evaluator:
    """Resolves template expressions against one set of parameter values."""

    def __init__(self, template: Template, values: Mapping[str, str], strict: bool = False) -> None:
        self.template = template
        self.values = dict(values)
        self.strict = strict  # raise Unevaluable instead of answering None
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.value(self.template.get("Conditions", {})[name]))
        return self._conditions[name]

    def creates(self, logical_id: str) -> bool:
        """Whether the resource exists for these values (its Condition holds)."""
        resource = self.template["Resources"][logical_id]
        return "Condition" not in resource or self.condition(resource["Condition"])

    def value(self, node: Any) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            return node
        (key, argument), = node.items()
        if key == "Ref":
            if argument == "AWS::NoValue":
                return None
            if self.strict and argument not in self.values:
                raise Unevaluable(f"{argument} is not known here")
            return self.values.get(argument)
        if key == "Condition":
            return self.condition(argument)
        if key == "Fn::Equals":
            left, right = (self.value(a) for a in argument)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.value(argument[0])
        if key == "Fn::And":
            return all(self.value(a) for a in argument)
        if key == "Fn::Or":
            return any(self.value(a) for a in argument)
        if key == "Fn::If":
            name, when_true, when_false = argument
            return self.value(when_true if self.condition(name) else when_false)
        if key == "Fn::FindInMap":
            mapping, top, second = (self.value(a) for a in argument)
            return self.template.get("Mappings", {}).get(mapping, {}).get(top, {}).get(second)
        if key == "Fn::Contains":  # [list of strings, string]: the string is one of them
            members, item = self.value(argument[0]), self.value(argument[1])
            return str(item) in [str(self.value(m)) for m in self._members(members)]
        if key == "Fn::EachMemberEquals":  # [list of strings, string]: every member equals it
            members, item = self.value(argument[0]), self.value(argument[1])
            return all(str(self.value(m)) == str(item) for m in self._members(members))
        if key == "Fn::EachMemberIn":  # [list, list]: every member of the first is in the second
            members, allowed = self.value(argument[0]), self.value(argument[1])
            return {str(self.value(m)) for m in self._members(members)} <= {
                str(self.value(m)) for m in self._members(allowed)}
        if key in ("Fn::Select", "Fn::Split", "Fn::Join", "Fn::Sub"):
            return self._string_function(key, argument)
        if self.strict:
            raise Unevaluable(f"{key} cannot be evaluated outside CloudFormation")
        return None

    def _string_function(self, key: str, argument: Any) -> Any:
        """Fn::Select, Fn::Split, Fn::Join and Fn::Sub, on known values."""
        if key == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument

            def known(match: re.Match[str]) -> str:
                name = match.group(1)
                found = self.value(variables[name]) if name in variables else self.value({"Ref": name})
                if found is None:
                    raise Unevaluable(f"{name} is not known here")
                return str(found)
            try:
                return re.sub(r"\$\{([A-Za-z0-9:]+)\}", known, text)
            except Unevaluable:
                if self.strict:
                    raise
                return None
        if key == "Fn::Split":
            delimiter, text = argument[0], self.value(argument[1])
            return None if text is None else str(text).split(delimiter)
        if key == "Fn::Join":
            delimiter, parts = argument[0], [self.value(a) for a in self._members(self.value(argument[1]))]
            return None if None in parts else delimiter.join(str(p) for p in parts)
        if key == "Fn::Select":
            index, members = int(self.value(argument[0])), self.value(argument[1])
            listed = self._members(members) if members is not None else []
            return self.value(listed[index]) if 0 <= index < len(listed) else None
        if self.strict:
            raise Unevaluable(f"{key} cannot be evaluated outside CloudFormation")
        return None

    def _members(self, node: Any) -> list[Any]:
        """A list argument: a literal list, or a list parameter's value (comma-separated)."""
        if isinstance(node, list):
            return node
        if node is None:
            if self.strict:
                raise Unevaluable("a list argument that cannot be evaluated")
            return []
        return [part.strip() for part in str(node).split(",")]

    def number(self, node: Any, default: float = 0) -> float:
        resolved = self.value(node)
        try:
            return float(resolved)
        except (TypeError, ValueError):
            return default

    def flag(self, node: Any, default: bool = False) -> bool:
        resolved = self.value(node)
        if resolved is None:
            return default
        return str(resolved).lower() == "true"
