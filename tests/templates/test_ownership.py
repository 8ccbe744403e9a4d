"""Each tier owns its names: no module spells another module's logical IDs.

A tier refers to what another tier made through the objects, references and ARNs that
tier hands out (`Ref(lb.web_target_group)`, `versions.deployed_arn()`,
`functions.role_of(t, function)`), never by rebuilding the name from a string (`Ref("XRole")`,
`Sub("...${CloudFrontPrefixList.Id}")`): a renamed resource then fails the build, not
the stack. The build is run with troposphere's Ref, GetAtt, Sub and the Template's
add_* methods watched; each logical ID belongs to the module that added it, and a
string naming one may appear only in that module. Parameters are the stack's
interface, read by every tier: they are all declared in templates/parameters.py, the
one module that may add them, and any module may name them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import troposphere
from troposphere import GetAtt, Ref, Sub, Template

import build
from templates import policies
from templates.options import BuildOptions
from templates.stack import build_template

ROOT = Path(__file__).resolve().parents[2]
PARAMETERS_MODULE = "templates/parameters.py"
# ${Name} or ${Name.Attribute} in Fn::Sub; ${!Literal} is not a reference.
SUB_NAME = re.compile(r"\$\{([^!}][^}.]*)")
# The functions below that stand between troposphere and the project's code.
WATCHERS = {"added", "add_condition", "init"}
# Helpers that add a resource under the very title their caller gives: the caller owns it.
# (inline_function is not one: it derives its role's and log group's names itself.)
PASS_THROUGH = {("templates/functions.py", "provided_resource"), ("templates/alerting.py", "topic_alarm")}


def _caller() -> str:
    """The project file that called into troposphere (repository-relative)."""
    frame = sys._getframe(2)
    package = str(Path(troposphere.__file__).parent)
    while frame.f_code.co_filename.startswith(package) or (
            frame.f_code.co_filename == __file__ and frame.f_code.co_name in WATCHERS) or (
            (str(Path(frame.f_code.co_filename).relative_to(ROOT))
             if Path(frame.f_code.co_filename).is_relative_to(ROOT) else "",
             frame.f_code.co_name) in PASS_THROUGH):
        assert frame.f_back is not None
        frame = frame.f_back
    path = Path(frame.f_code.co_filename)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _tier() -> str:
    """The outermost module of templates/ below the composition (templates/stack.py) that
    led to this call: the tier that asked for it, whatever helper made it."""
    frame, tier = sys._getframe(2), ""
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.parent == ROOT / "templates":
            if path.name == "stack.py":
                break
            tier = str(path.relative_to(ROOT))
        frame = frame.f_back  # type: ignore[assignment]
    return tier


@dataclass
class Names:
    owner: dict[str, str] = field(default_factory=dict)  # logical ID -> module that added it
    parameters: dict[str, str] = field(default_factory=dict)  # parameter -> module that added it
    spelled: list[tuple[str, str, str]] = field(default_factory=list)  # (module, how, name)

    def foreign(self) -> list[str]:
        """Each name a module spells that it does not own and is no parameter."""
        found = []
        for module, how, name in self.spelled:
            if name.startswith("AWS::") or name in self.parameters or self.owner.get(name) == module:
                continue
            owner = self.owner.get(name, "no module (it does not exist)")
            found.append(f"{module} spells {name} in {how}; it belongs to {owner}")
        return sorted(set(found))


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], object]], Names]:
    def run(make: Callable[[], object]) -> Names:
        names = Names()

        def wrap(method: str, into: dict[str, str], owner: Callable[[], str]) -> None:
            original = getattr(Template, method)

            def added(self: Template, value: object, *args: object, **kwargs: object) -> object:
                for item in value if isinstance(value, list) else [value]:
                    into[str(item.title)] = owner()  # type: ignore[attr-defined]
                return original(self, value, *args, **kwargs)

            monkeypatch.setattr(Template, method, added)

        wrap("add_resource", names.owner, _caller)
        wrap("add_parameter", names.parameters, _tier)
        original_condition = Template.add_condition

        def add_condition(self: Template, name: str, condition: object) -> object:
            names.owner[name] = _caller()
            return original_condition(self, name, condition)

        monkeypatch.setattr(Template, "add_condition", add_condition)

        def watched(cls: type, how: str, spelled: Callable[..., Iterator[str]]) -> None:
            original = cls.__init__  # type: ignore[misc]

            def init(self: object, *args: object, **kwargs: object) -> None:
                for name in spelled(*args, **kwargs):
                    names.spelled.append((_caller(), how, name))
                original(self, *args, **kwargs)

            monkeypatch.setattr(cls, "__init__", init)

        def ref(data: object) -> Iterator[str]:
            if isinstance(data, str):
                yield data

        def get_att(logical_name: object, attribute: object) -> Iterator[str]:
            if isinstance(logical_name, str):
                yield logical_name

        def sub(text: object, variables: object = None, **keywords: object) -> Iterator[str]:
            given = {*(variables or {}), *keywords}  # type: ignore[misc]
            if isinstance(text, str):
                yield from (n for n in SUB_NAME.findall(text) if n not in given)

        watched(Ref, "Ref", ref)
        watched(GetAtt, "GetAtt", get_att)
        watched(Sub, "Sub", sub)
        make()
        return names

    return run


def test_no_module_spells_a_logical_id_another_module_owns(watch):
    names = watch(lambda: build_template(BuildOptions(), build.load_assets()))
    assert len(names.owner) > 100 and len(names.spelled) > 50  # the watch saw the build
    assert names.foreign() == []


def test_every_parameter_is_declared_in_the_parameters_module(watch):
    names = watch(lambda: build_template(BuildOptions(), build.load_assets()))
    assert {module for module in names.parameters.values()} == {PARAMETERS_MODULE}


def test_the_watch_finds_a_role_rebuilt_from_its_owners_naming_rule(watch):
    """The check can fail: this module spells a role that templates/policies.py added."""
    def make() -> None:
        t = Template()
        policies.service_role(t, "ExampleFunctionRole", "lambda.amazonaws.com", "Example", [])
        t.add_resource(troposphere.iam.PolicyType(
            "ExamplePolicy", PolicyName="x", PolicyDocument={},
            Roles=[Ref("ExampleFunctionRole")]))
        Sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${ExampleFunctionRole}")
        Sub("${Given}", Given=Ref("AWS::Region"))  # a name given to Sub is no reference

    names = watch(make)
    assert names.foreign() == [
        f"tests/templates/test_ownership.py spells ExampleFunctionRole in {how}; it belongs to "
        "templates/policies.py" for how in ("Ref", "Sub")]


def test_no_module_looks_up_another_module_s_resource_by_name():
    """t.resources[...] by name is the owner's business: templates/functions.py names function roles."""
    lookups = {path.name for path in (ROOT / "templates").glob("*.py") if ".resources[" in path.read_text()}
    assert lookups <= {"functions.py"}
