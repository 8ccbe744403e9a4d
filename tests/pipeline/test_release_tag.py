"""One release-tag rule, defined in templates/options.py, applied alike everywhere.

The build, the rollout (through its configuration) and the instance scripts (through
stack.env) receive the same pattern; this table is run through each of them.
"""

from __future__ import annotations

import pytest

from lambdas.rollout.plan import check_tag, downgrade_refusal, order_key, parse_desired
from templates.options import RELEASE_TAG, RELEASE_TAG_PATTERN
from tests.pipeline.test_deploy_script import run

TAGS = {
    "v4.7.6": True,
    "v4.3.0": True,
    "v4.10.2": True,
    "v4.8.0-rc.1": True,
    "v5.0.0": True,  # a future major
    "v12.3.4-beta.2": True,
    "v4.2.9": False,  # no streaming image of its own
    "v3.5.0": False,
    "v4.7.6\n": False,  # a trailing newline ($ must be the true end)
    "v4.7.\u0666": False,  # an Arabic-Indic digit six
    "\uff564.7.6": False,  # a full-width v
    "v4.7.6 ": False,
    "v4.7": False,
    "latest": False,
    "v4.7.6-rc1": False,
    "v4.7.6; reboot": False,
    "v4.7." + "9" * 300: False,  # bounded: any accepted tag fits every record and tag
}


@pytest.mark.parametrize("tag, accepted", TAGS.items(), ids=[repr(t)[:20] for t in TAGS])
def test_the_build_and_the_rollout_accept_the_same_tags(tag, accepted):
    assert bool(RELEASE_TAG.fullmatch(tag)) is accepted
    assert (check_tag(tag, RELEASE_TAG_PATTERN) is None) is accepted


@pytest.mark.parametrize("tag, accepted", TAGS.items(), ids=[repr(t)[:20] for t in TAGS])
def test_deploy_sh_accepts_the_same_tags(tmp_path, tag, accepted):
    proc, calls = run(tmp_path, "web", "deploy", tag)
    if accepted:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2 and calls == [], proc.stderr


def test_every_accepted_tag_is_short():
    assert max(len(t) for t, ok in TAGS.items() if ok) <= 24
    assert RELEASE_TAG.fullmatch("v999.999.999-alpha.999")
    assert not RELEASE_TAG.fullmatch("v1000.0.0")


@pytest.mark.parametrize(
    "value, tag, allowed",
    [
        ("v4.7.6", "v4.7.6", False),
        ("v4.7.5 allow-downgrade", "v4.7.5", True),
        ("v4.7.5  allow-downgrade", "v4.7.5  allow-downgrade", False),
    ],
)
def test_the_desired_value_names_a_tag_and_perhaps_the_operators_leave_to_downgrade(value, tag, allowed):
    assert parse_desired(value) == (tag, allowed)


def test_release_tags_order_with_pre_releases_before_their_release():
    ordered = [
        "v4.6.2",
        "v4.7.0-alpha.1",
        "v4.7.0-beta.2",
        "v4.7.0-rc.1",
        "v4.7.0",
        "v4.7.6",
        "v4.10.0",
        "v5.0.0",
    ]
    keys = [order_key(t) for t in ordered]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_an_older_target_is_refused_unless_the_operator_asked_for_it():
    refusal = downgrade_refusal("v4.7.5", "v4.7.6", allowed=False)
    assert refusal and "v4.7.5 allow-downgrade" in refusal and "nothing was changed" in refusal
    assert downgrade_refusal("v4.7.5", "v4.7.6", allowed=True) is None
    assert downgrade_refusal("v4.7.7", "v4.7.6", allowed=False) is None
