"""Evaluate a built template's parameters, conditions and simple intrinsics for given values.

Just enough of CloudFormation's semantics (Ref to a parameter, Fn::Equals, Not, And,
Or, If, FindInMap, Condition) to tell which resources a parameter set creates and
what a property resolves to; anything else evaluates to None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Template = Mapping[str, Any]


def parameter_values(template: Template, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The template's defaults, overridden by the given values (all as strings)."""
    values = {name: str(spec["Default"]) for name, spec in template.get("Parameters", {}).items()
              if "Default" in spec}
    values.update(given or {})
    return values


class Evaluator:
    """Resolves template expressions against one set of parameter values."""

    def __init__(self, template: Template, values: Mapping[str, str]) -> None:
        self.template = template
        self.values = dict(values)
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
        return None

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
