"""The stack's tag rule (issue 15): release tags while the images are upstream's, the OCI
tag rule for a fork's or a CI's images; the same answer from the rollout (Python) and the
servers' scripts (bash ERE, TAG_PATTERN in stack.env), and messages that name the rule.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from lambdas.rollout.names import CUSTOM_TAG_PATTERN
from lambdas.rollout.plan import check_tag, downgrade_refusal
from templates.options import RELEASE_TAG_PATTERN
from tests.instance.instance_harness import INSTANCE_DIR
from tests.pipeline.test_deploy_script import run

CUSTOM_TAGS = {
    "v4.7.6": True,
    "v4.7.6-glitch": True,
    "2026-12-01": True,
    "3f9c2e1": True,
    "latest": True,
    "_build.7": True,
    "A" * 128: True,
    "A" * 129: False,  # bounded, as registries bound it
    "v4.7.6+glitch": False,  # "+" is no OCI tag character: no registry holds such a tag
    "-rc1": False,
    ".hidden": False,
    "": False,
    "v4.7.6\n": False,  # a trailing newline ($ must be the true end)
    "v4 7": False,
    "v4.7.6;reboot": False,
    "$(reboot)": False,
    "`id`": False,
    "../v4": False,
    "a/b": False,
    "a:b": False,
    "a\tb": False,
    "v4.7.\u0666": False,  # an Arabic-Indic digit six
    "\u00e9t\u00e9": False,  # letters outside ASCII
    "\uff564.7.6": False,  # a full-width v
}
RELEASE_TAGS = {
    "v4.7.6": True,
    "v4.8.0-rc.1": True,
    "v4.7.6-glitch": False,
    "latest": False,
    "v4.7.\u0666": False,
    "v4.7.6\n": False,
}
CASES = [(RELEASE_TAG_PATTERN, t, ok) for t, ok in RELEASE_TAGS.items()] + [
    (CUSTOM_TAG_PATTERN, t, ok) for t, ok in CUSTOM_TAGS.items()
]


def bash_verdicts(pattern: str, tags: list[str]) -> list[bool]:
    """is_version_tag (common.sh) on each tag, TAG_PATTERN as stack.env sets it, in a UTF-8
    locale as on the servers: the function's own C locale is what keeps [A-Za-z] ASCII."""
    script = (
        f'. "{INSTANCE_DIR / "common.sh"}"\n'
        "while IFS= read -r -d '' tag; do\n"
        "  if is_version_tag \"$tag\"; then echo yes; else echo no; fi\n"
        "done\n"
    )
    proc = subprocess.run(
        ["bash", "-c", script],
        input="".join(f"{t}\0" for t in tags).encode(),
        env={"PATH": os.environ["PATH"], "TAG_PATTERN": pattern, "LC_ALL": "C.UTF-8", "LOG_NAME": "test"},
        capture_output=True,
        timeout=30,
        check=True,
    )
    return [line == "yes" for line in proc.stdout.decode().splitlines()]


@pytest.mark.parametrize("pattern", [RELEASE_TAG_PATTERN, CUSTOM_TAG_PATTERN], ids=["release", "oci"])
def test_the_servers_accept_exactly_the_tags_the_rollout_accepts(pattern):
    tags = [t for p, t, _ in CASES if p == pattern]
    expected = [ok for p, _, ok in CASES if p == pattern]
    python = [check_tag(t, pattern) is None for t in tags]
    assert python == expected
    assert bash_verdicts(pattern, tags) == expected


@pytest.mark.parametrize("pattern, tag, accepted", CASES, ids=[f"{p[:3]}-{t[:20]!r}" for p, t, _ in CASES])
def test_the_rollout_accepts_a_tag_only_under_its_rule(pattern, tag, accepted):
    assert (check_tag(tag, pattern) is None) is accepted


def test_a_refused_tag_of_your_own_images_names_the_oci_rule_and_why_plus_is_refused():
    reason = check_tag("v4.7.6+glitch", CUSTOM_TAG_PATTERN)
    assert reason and "OCI" in reason and "upstream's" in reason
    assert "'+'" in reason and "v4.7.6-glitch" in reason and "nothing was changed" in reason
    assert "release tag" not in reason


def test_a_refused_tag_of_upstream_s_images_names_the_release_rule():
    reason = check_tag("v4.7.6-glitch", RELEASE_TAG_PATTERN)
    assert reason and "Mastodon release tag" in reason and "upstream's images" in reason
    assert "OCI" not in reason


@pytest.mark.parametrize("value", [None, 7, ["v4.7.6"]])
def test_a_value_that_is_no_text_is_refused_under_either_rule(value):
    assert check_tag(value, CUSTOM_TAG_PATTERN) and check_tag(value, RELEASE_TAG_PATTERN)


@pytest.mark.parametrize("tag, accepted", [("v4.7.6-glitch", True), ("v4.7.6+glitch", False)])
def test_deploy_sh_takes_the_rule_from_stack_env(tmp_path, tag, accepted):
    proc, calls = run(tmp_path, "web", "deploy", tag, stack_env={"TAG_PATTERN": CUSTOM_TAG_PATTERN})
    if accepted:
        assert proc.returncode == 0, proc.stderr
        assert any(tag in " ".join(call) for call in calls)
    else:
        assert proc.returncode == 2 and calls == [], proc.stderr
        assert "does not follow the stack's tag rule" in proc.stderr


# ---------------------------------------------------------------- the downgrade guard
@pytest.mark.parametrize(
    "target, deployed",
    [
        ("v4.7.6-glitch", "v4.7.5-glitch"),  # a fork's tags: not release tags
        ("2026-12-01", "2026-11-30"),  # a CI's dates
        ("3f9c2e1", "v4.7.6"),  # from upstream's release to a commit's build
        ("v4.7.6", "3f9c2e1"),  # and back
    ],
)
def test_tags_that_cannot_be_ordered_need_the_operator_s_word(target, deployed):
    refusal = downgrade_refusal(target, deployed, allowed=False)
    assert refusal and "cannot be ordered" in refusal and "nothing was changed" in refusal
    assert f"'{target} allow-downgrade'" in refusal
    assert downgrade_refusal(target, deployed, allowed=True) is None


@pytest.mark.parametrize("tag", ["v4.7.6-glitch", "2026-12-01", "v4.7.6"])
def test_the_tag_the_servers_already_run_is_no_downgrade(tag):
    assert downgrade_refusal(tag, tag, allowed=False) is None


def test_two_release_tags_are_still_ordered_without_asking():
    assert downgrade_refusal("v4.7.7", "v4.7.6", allowed=False) is None
    refusal = downgrade_refusal("v4.7.5", "v4.7.6", allowed=False)
    assert refusal and "is older than" in refusal and "cannot be ordered" not in refusal
