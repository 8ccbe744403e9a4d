"""Every fact that crosses the Python / shell / Lambda boundary is spelled in one place.

The ports and health paths, the servers' directories, the stack's name prefix, the tag
keys, the images, the release-tag rule, the metadata service and CloudFormation's
inline-template limit each have one definition in Python; the instance scripts receive
them through stack.env (templates/compute.py), the Lambdas through their configuration
or the modules the build embeds. This test reads the code the template, the servers and
the operator run, and fails on any other spelling. The patterns are built from the
definitions themselves, so this file spells none of them either.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from lambdas.rollout import names
from templates import compute, load_balancing, options, sidekiq

REPO = Path(__file__).resolve().parents[1]
LIBRARY = "templates/instance/common.sh"


def sources(root: Path = REPO) -> list[Path]:
    """The code that reaches the template, the servers, the Lambdas and the operator."""
    found = [root / "build.py"] if (root / "build.py").exists() else []
    for folder in ("templates", "lambdas", "scripts", "benchmarks"):
        found += sorted((root / folder).rglob("*.py"))
    found += sorted((root / "templates" / "instance").glob("*.sh"))
    return [path for path in found if path.is_file()]


@dataclass(frozen=True)
class Fact:
    name: str
    pattern: re.Pattern[str]
    homes: tuple[str, ...]  # the files holding the one definition, each exactly once
    # Files where the same characters mean something else, and why.
    unrelated: tuple[tuple[str, str], ...] = ()


def literal(value: str, *, alone: bool = False) -> re.Pattern[str]:
    """VALUE as written; ALONE: not as part of a longer word, number or name."""
    text = re.escape(value)
    return re.compile(rf"(?<![A-Za-z_-]){text}(?![\w-])" if alone else text)


def port(number: int) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){number}(?![\w.])")


FACTS = (
    Fact("web port", port(load_balancing.WEB_PORT), ("templates/load_balancing.py",),
         unrelated=(("templates/parameters.py", "WAF's default rate limit, requests per five minutes"),)),
    Fact("streaming port", port(load_balancing.STREAMING_PORT), ("templates/load_balancing.py",)),
    Fact("web health path", literal(load_balancing.WEB_HEALTH_PATH, alone=True),
         ("templates/load_balancing.py",)),
    Fact("streaming health path", literal(load_balancing.STREAMING_HEALTH_PATH),
         ("templates/load_balancing.py",)),
    # The scripts must find stack.env before they can read anything from it: common.sh
    # holds the directory once, and test_the_library_finds_stack_env_where_user_data_writes_it
    # holds it equal to the template's.
    Fact("servers' settings directory", literal(compute.ETC_DIR), ("templates/compute.py", LIBRARY)),
    Fact("servers' scripts directory", literal(compute.SCRIPTS_DIR), ("templates/compute.py",)),
    Fact("instance metadata service", literal(compute.IMDS_URL.split("//")[1]), ("templates/compute.py",)),
    # As written in Sub strings (${AWS::StackName}, {{...}} in f-strings) or with any
    # stack name put in by an f-string.
    Fact("stack name prefix", re.compile(
        re.escape(options.STACK_PREFIX.split("$")[0]) + r"(\$?\{+AWS::StackName|\{(?!\{))"),
         ("templates/options.py",)),
    Fact("inline template limit", re.compile(
        "{}[,_ ]?{}".format(*divmod(options.INLINE_TEMPLATE_LIMIT, 1000)).replace(" ", "") + "(?!\\d)"),
        ("templates/options.py",)),
    Fact("mastodon image", literal(options.MASTODON_IMAGE, alone=True), ("templates/options.py",)),
    Fact("streaming image", literal(options.STREAMING_IMAGE, alone=True), ("templates/options.py",)),
    Fact("release tag rule", literal(options.RELEASE_TAG_PATTERN[:24]), ("templates/options.py",)),
    Fact("OCI tag rule", literal(names.CUSTOM_TAG_PATTERN[:24]), ("lambdas/rollout/names.py",)),
    Fact("ECR registry host", literal(names.ECR_HOST_PATTERN[:24]), ("lambdas/rollout/names.py",)),
    Fact("version tag", literal(names.VERSION_TAG, alone=True), ("lambdas/rollout/names.py",)),
    Fact("journal tag", literal(names.JOURNAL_TAG, alone=True), ("lambdas/rollout/names.py",)),
    Fact("hold tag", literal(names.HOLD_TAG, alone=True), ("lambdas/rollout/names.py",)),
    Fact("surge tag", literal(names.SURGE_TAG, alone=True), ("lambdas/rollout/names.py",)),
    Fact("group tag", literal(names.GROUP_TAG, alone=True), ("lambdas/rollout/names.py",)),
    Fact("role tag", literal(compute.ROLE_TAG, alone=True), ("templates/compute.py",)),
    # The queue metrics: published by the servers (stack.env), read by alarms and scaling.
    Fact("queue metrics namespace", literal(sidekiq.METRICS_NAMESPACE.data["Fn::Sub"]),
         ("templates/sidekiq.py",)),
    *(Fact(f"metric {name}", literal(name, alone=True), ("templates/sidekiq.py",)) for name in (
        sidekiq.LATENCY_METRIC, sidekiq.SIZE_METRIC, sidekiq.OLDEST_JOB_METRIC,
        sidekiq.QUEUE_WORKER_LATENCY_METRIC, sidekiq.DEAD_METRIC, sidekiq.RETRY_METRIC,
        sidekiq.PROCESSES_METRIC)),
    Fact("custom metrics metadata", literal(compute.CUSTOM_METRICS_METADATA, alone=True),
         ("templates/compute.py",)),
)


def misplaced(fact: Fact, root: Path = REPO) -> list[str]:
    """Where FACT is spelled outside its definition (and not in a file where it means something else)."""
    skip = {*fact.homes, *(path for path, _ in fact.unrelated)}
    found = []
    for path in sources(root):
        relative = path.relative_to(root).as_posix()
        if relative in skip:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if fact.pattern.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_the_scan_reads_every_kind_of_code():
    read = {path.relative_to(REPO).as_posix() for path in sources()}
    assert {"build.py", "templates/compute.py", "lambdas/rollout/names.py", "scripts/deploy.py",
            "benchmarks/rollout.py", "templates/instance/bootstrap.sh", LIBRARY} <= read


@pytest.mark.parametrize("fact", FACTS, ids=lambda fact: fact.name)
def test_a_fact_is_spelled_only_in_its_definition(fact):
    assert misplaced(fact) == [], f"{fact.name}: import it (Python) or take it from stack.env (shell)"


@pytest.mark.parametrize("fact", FACTS, ids=lambda fact: fact.name)
def test_each_definition_spells_its_fact_once(fact):
    for home in fact.homes:
        text = (REPO / home).read_text()
        assert len(fact.pattern.findall(text)) == 1, f"{fact.name} in {home}"


def test_the_scan_finds_a_fact_spelled_again(tmp_path):
    (tmp_path / "templates" / "instance").mkdir(parents=True)
    (tmp_path / "templates" / "instance" / "probe.sh").write_text(
        f"curl http://127.0.0.1:{load_balancing.WEB_PORT}{load_balancing.WEB_HEALTH_PATH}\n")
    (tmp_path / "templates" / "load_balancing.py").write_text(f"WEB_PORT = {load_balancing.WEB_PORT}\n")
    by_name = {fact.name: fact for fact in FACTS}
    assert misplaced(by_name["web port"], tmp_path) == [
        f"templates/instance/probe.sh:1: curl http://127.0.0.1:{load_balancing.WEB_PORT}"
        f"{load_balancing.WEB_HEALTH_PATH}"]
    assert len(misplaced(by_name["web health path"], tmp_path)) == 1


def test_the_library_finds_stack_env_where_user_data_writes_it():
    script = f'MASTODON_ROOT=/root-of-a-test\n. "{REPO / LIBRARY}"\nprintf %s "$STACK_ENV_FILE"'
    found = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert found == f"/root-of-a-test{compute.STACK_ENV_FILE}"
