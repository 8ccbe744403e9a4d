"""Build the Mastodon stack's CloudFormation template into dist/ and summarize it.

    python build.py [--mastodon-version vX.Y.Z] [--output-dir dist]
                    [--parameters parameters/production.json] [--spot] [--docs] [--golden]

Writes dist/mastodon.yaml (for people), dist/mastodon.json (for tools) and
dist/architecture.svg (a picture drawn from the template), then prints what the
template holds, how its size compares with CloudFormation's limits, and its monthly
cost in us-east-1 before traffic, for the template's defaults or a parameter file
(--spot: as if every server ran on spot). --docs also refreshes the README's
picture, docs/architecture.svg; --golden the reviewed snapshot of the template that
the tests compare, tests/golden/mastodon.yaml (review its diff). Bad options or a
parameter file the template would refuse end with a message and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts import architecture, costs, parameter_files
from templates.compute import UserDataTooLarge
from templates.functions import assemble
from templates.options import INLINE_TEMPLATE_LIMIT, BuildOptions, OptionsError
from templates.stack import Assets, build_template
from templates.stack_policy import stack_policy

ROOT = Path(__file__).resolve().parent
LAMBDAS = ROOT / "lambdas"
INSTANCE_SCRIPTS = ROOT / "templates" / "instance"
TEMPLATE_NAME = "mastodon"
# Set on the stack by scripts/deploy.py: updates may not replace or delete the data.
# In its own folder, so that dist/*.json holds templates only (linters take them all).
STACK_POLICY_NAME = "policy/stack-policy.json"
PRICES = ROOT / "pricing" / "us-east-1.json"
DOCS_PICTURE = ROOT / "docs" / "architecture.svg"
# The reviewed snapshot of the default template (tests/templates/test_golden.py).
GOLDEN_TEMPLATE = ROOT / "tests" / "golden" / "mastodon.yaml"
PICTURE_NAME = "architecture.svg"
# A Lambda module is a function when it defines lambda_handler at its top level; it
# shares the modules of lambdas/ it imports at its top level (`from lambdas.x import ...`
# or `from lambdas import x`). Read from the text: parsing every module takes too long.
HANDLER = re.compile(r"^def lambda_handler\(", re.MULTILINE)
SHARED_IMPORT = re.compile(r"^from lambdas(?:\.(\w+))? import ([\w, ]+)$", re.MULTILINE)

# CloudFormation quotas (Service Quotas, CloudFormation): a template body passed
# inline may hold INLINE_TEMPLATE_LIMIT bytes (templates/options.py), one read from S3
# 1 MB, and a stack 500 resources.
S3_BODY_LIMIT = 1_000_000
RESOURCE_LIMIT = 500
PARAMETER_LIMIT = 200
OUTPUT_LIMIT = 200


def load_assets(lambdas_dir: Path = LAMBDAS, scripts_dir: Path = INSTANCE_SCRIPTS) -> Assets:
    """Read each Lambda module and instance script the template embeds.

    A function is a module of lambdas/ that defines lambda_handler, or a package of
    modules (its __init__.py lists them in MODULES, the last one holding lambda_handler).
    A module that imports shared modules of lambdas/ (lambdas/custom_resource.py) is
    assembled with them into one file; one that imports none is inlined as it is.
    """
    functions = {}
    for path in sorted(lambdas_dir.glob("*.py")):
        if not HANDLER.search(path.read_text()):
            continue  # a shared module, not a function
        order = shared_modules(lambdas_dir, path.stem)
        if order == [path.stem]:
            functions[path.stem] = path.read_text()
        else:
            modules = [(name, (lambdas_dir / f"{name}.py").read_text()) for name in order]
            functions[path.stem] = assemble("lambdas", modules, path.stem)
    for init in sorted(lambdas_dir.glob("*/__init__.py")):
        order = ast.literal_eval(next(
            node.value for node in ast.parse(init.read_text()).body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MODULES"
        ))
        package = f"lambdas.{init.parent.name}"
        modules = [(name, (init.parent / f"{name}.py").read_text()) for name in order]
        functions[init.parent.name] = assemble(package, modules, order[-1])
        entries: dict[str, tuple[str, ...]] = next((
            ast.literal_eval(node.value) for node in ast.parse(init.read_text()).body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ENTRIES"
        ), {})
        for function, names in entries.items():
            parts = [(name, (init.parent / f"{name}.py").read_text()) for name in names]
            functions[function] = assemble(package, parts, names[-1])
    scripts = {path.name: path.read_text() for path in sorted(scripts_dir.glob("*.sh"))}
    return Assets(lambdas=functions, instance_scripts=scripts)


def shared_modules(lambdas_dir: Path, name: str) -> list[str]:
    """Module `name` after the modules of lambdas/ it imports, each after its own imports."""
    order: list[str] = []

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise ValueError(f"lambdas/{module}.py imports itself through {' -> '.join(path)}")
        if module in order:
            return
        for submodule, names in SHARED_IMPORT.findall((lambdas_dir / f"{module}.py").read_text()):
            for dependency in [submodule] if submodule else [n.strip() for n in names.split(",")]:
                visit(dependency, (*path, module))
        order.append(module)

    visit(name, ())
    return order


@dataclass(frozen=True)
class Summary:
    resources: int
    parameters: int
    outputs: int
    json_bytes: int
    yaml_bytes: int
    template: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def lines(self) -> list[str]:
        smallest = min(self.json_bytes, self.yaml_bytes)
        if smallest <= INLINE_TEMPLATE_LIMIT:
            deploy = "fits inline (--template-body)"
        elif smallest <= S3_BODY_LIMIT:
            deploy = "needs an S3 bucket to deploy (above the inline limit)"
        else:
            deploy = "TOO LARGE for CloudFormation"
        return [
            f"resources   {self.resources:>7} of {RESOURCE_LIMIT}",
            f"parameters  {self.parameters:>7} of {PARAMETER_LIMIT}",
            f"outputs     {self.outputs:>7} of {OUTPUT_LIMIT}",
            f"JSON        {self.json_bytes:>7} bytes ({self.json_bytes / INLINE_TEMPLATE_LIMIT:.0%} of "
            f"{INLINE_TEMPLATE_LIMIT} inline, {self.json_bytes / S3_BODY_LIMIT:.0%} of 1 MB from S3)",
            f"YAML        {self.yaml_bytes:>7} bytes ({self.yaml_bytes / INLINE_TEMPLATE_LIMIT:.0%} of "
            f"{INLINE_TEMPLATE_LIMIT} inline, {self.yaml_bytes / S3_BODY_LIMIT:.0%} of 1 MB from S3)",
            f"deploy      {deploy}",
        ]


class BuildError(RuntimeError):
    """The template breaks one of CloudFormation's limits."""


def build(options: BuildOptions, output_dir: Path) -> Summary:
    template = build_template(options, load_assets())
    body_json = template.to_json(indent=1)
    # No clean_up: it rewrites Join as Sub, which would read "${" in scripts as references.
    body_yaml = template.to_yaml(clean_up=False, long_form=False)
    as_dict = json.loads(body_json)
    summary = Summary(
        resources=len(as_dict["Resources"]),
        parameters=len(as_dict.get("Parameters", {})),
        outputs=len(as_dict.get("Outputs", {})),
        json_bytes=len(body_json.encode()),
        yaml_bytes=len(body_yaml.encode()),
        template=as_dict,
    )
    if summary.resources > RESOURCE_LIMIT or min(summary.json_bytes, summary.yaml_bytes) > S3_BODY_LIMIT:
        raise BuildError("\n".join(["the template exceeds CloudFormation's limits:", *summary.lines()]))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{TEMPLATE_NAME}.json").write_text(body_json + "\n")
    (output_dir / f"{TEMPLATE_NAME}.yaml").write_text(body_yaml)
    (output_dir / PICTURE_NAME).write_text(architecture.svg(as_dict))
    (output_dir / STACK_POLICY_NAME).parent.mkdir(exist_ok=True)
    (output_dir / STACK_POLICY_NAME).write_text(json.dumps(stack_policy(), indent=1) + "\n")
    return summary


@dataclass(frozen=True)
class Request:
    options: BuildOptions
    output_dir: Path
    parameters: Path | None = None
    spot: bool = False
    docs: bool = False
    golden: bool = False


def parse_args(argv: list[str]) -> Request:
    from scripts.version import version_action

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=version_action(), help="print the project's version and exit")
    parser.add_argument("--mastodon-version", default=BuildOptions.mastodon_version,
                        help="Mastodon release new stacks boot (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist",
                        help="where to write the templates (default: dist/)")
    parser.add_argument("--parameters", type=Path, metavar="FILE",
                        help="estimate the cost for this AWS-CLI parameter file (default: the "
                        "template's defaults); the file must fit the template")
    parser.add_argument("--spot", action="store_true",
                        help="estimate the cost as if every server ran on spot")
    parser.add_argument("--docs", action="store_true",
                        help=f"also write the picture to {DOCS_PICTURE.relative_to(ROOT)}")
    parser.add_argument("--golden", action="store_true",
                        help="also write the template to tests/golden/mastodon.yaml, the reviewed "
                        "snapshot the tests compare (default options only)")
    args = parser.parse_args(argv)
    if args.golden and args.mastodon_version != BuildOptions.mastodon_version:
        parser.error("--golden records the default template: leave out --mastodon-version")
    try:
        return Request(BuildOptions(mastodon_version=args.mastodon_version), args.output_dir,
                       args.parameters, args.spot, args.docs, args.golden)
    except OptionsError as error:
        parser.error(str(error))  # exits with status 2


def main(argv: list[str] | None = None) -> int:
    request = parse_args(sys.argv[1:] if argv is None else argv)
    options, output_dir = request.options, request.output_dir
    started = time.perf_counter()
    try:
        parameter_files.read(request.parameters) if request.parameters else {}
    except parameter_files.ParameterFileError as error:
        print(f"build.py: error: {error}", file=sys.stderr)
        return 2
    try:
        summary = build(options, output_dir)
        estimate = cost_estimate(summary.template, request)
        if request.docs:
            DOCS_PICTURE.parent.mkdir(parents=True, exist_ok=True)
            DOCS_PICTURE.write_text(architecture.svg(summary.template))
        if request.golden:
            GOLDEN_TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
            GOLDEN_TEMPLATE.write_text((output_dir / f"{TEMPLATE_NAME}.yaml").read_text())
    except parameter_files.ParameterFileError as error:
        print(f"build.py: error: {error}", file=sys.stderr)
        return 2
    except (BuildError, UserDataTooLarge, OSError, costs.PriceMissing) as error:
        print(f"build.py: error: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(f"Mastodon {options.mastodon_version} stack written to {output_dir}/{TEMPLATE_NAME}.yaml "
          f"and .json (picture: {PICTURE_NAME}) in {elapsed:.2f} s")
    for line in summary.lines():
        print(f"  {line}")
    chosen = request.parameters or "the template's defaults"
    print(f"Monthly cost for {chosen}{' on spot' if request.spot else ''} "
          f"(prices: {PRICES.relative_to(ROOT)}, {estimate.as_of}):")
    for line in estimate.lines():
        print(f"  {line}")
    return 0


def cost_estimate(template: dict[str, Any], request: Request) -> costs.Estimate:
    """The estimate for the request's parameter file (checked against the template) or the defaults."""
    prices = json.loads(PRICES.read_text())
    # The estimate is for the price table's region, so the template's rules are checked there.
    given = parameter_files.load(request.parameters, template, prices["region"]) if request.parameters else {}
    return costs.estimate(template, given, prices, spot=True if request.spot else None)


if __name__ == "__main__":
    sys.exit(main())
