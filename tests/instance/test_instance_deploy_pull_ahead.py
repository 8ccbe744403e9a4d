"""deploy.sh pull: the rollout's pull-ahead fetches a release's images while the server serves.

Run for real under the stub commands, like tests/instance/test_instance_deploy_disk.py:
the images land on disk, the disk guard applies, and nothing that runs is touched.
"""

from __future__ import annotations

import pytest

from tests.instance.test_instance_deploy_disk import (
    GIB_KIB,
    MASTODON,
    NEW,
    OLD,
    OLDER,
    ON_DISK,
    STREAMING,
    deploy,
    removed,
    version,
)


def pulls(calls: list[list[str]]) -> list[str]:
    return [c[-1] for c in calls if c[:2] == ["docker", "pull"]]


@pytest.mark.parametrize(
    "role, images", [("web", [f"{MASTODON}:{NEW}", f"{STREAMING}:{NEW}"]), ("worker", [f"{MASTODON}:{NEW}"])]
)
def test_a_pull_fetches_the_roles_images_and_changes_nothing_that_runs(tmp_path, role, images):
    proc, calls = deploy(tmp_path, role, "pull", NEW, images=ON_DISK)
    assert proc.returncode == 0, proc.stderr
    assert pulls(calls) == images
    assert f"pulled {NEW} on {role}" in proc.stdout
    assert version(tmp_path) == f"MASTODON_VERSION={OLD}\n"
    changed = [
        c for c in calls if c[0] in ("systemctl", "curl") or c[:2] in (["docker", "rmi"], ["docker", "run"])
    ]
    assert not changed


def test_short_of_disk_a_pull_makes_room_but_keeps_the_running_version(tmp_path):
    # The server serves OLD while it pulls: its containers use OLD's images.
    proc, calls = deploy(
        tmp_path,
        "web",
        "pull",
        NEW,
        images=ON_DISK,
        free_kib=[str(GIB_KIB), str(3 * GIB_KIB)],
        running_images=[f"{MASTODON}:{OLD}", f"{STREAMING}:{OLD}"],
    )
    assert proc.returncode == 0, proc.stderr
    assert {f"{MASTODON}:{OLDER}", f"{STREAMING}:{OLDER}"} <= set(removed(calls))
    assert not {f"{MASTODON}:{OLD}", f"{STREAMING}:{OLD}"} & set(removed(calls))
    assert pulls(calls) == [f"{MASTODON}:{NEW}", f"{STREAMING}:{NEW}"]
    assert version(tmp_path) == f"MASTODON_VERSION={OLD}\n"


def test_still_short_of_disk_a_pull_fails_with_the_reason_and_pulls_nothing(tmp_path):
    proc, calls = deploy(tmp_path, "web", "pull", NEW, images=ON_DISK, free_kib=str(GIB_KIB))
    assert proc.returncode != 0
    assert "not enough disk to pull" in proc.stderr.strip().splitlines()[-1]
    assert pulls(calls) == [] and not [c for c in calls if c[0] == "systemctl"]
    assert f"{MASTODON}:{OLD}" not in removed(calls)


def test_a_failing_pull_says_which_image(tmp_path):
    image = f"{STREAMING}:{NEW}"
    proc, _ = deploy(tmp_path, "web", "pull", NEW, images=ON_DISK, pull_fail=image + "\n")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith(f"docker pull {image} failed after 2 attempts")
    assert version(tmp_path) == f"MASTODON_VERSION={OLD}\n"


@pytest.mark.parametrize(
    "args", [("pull",), ("pull", "latest"), ("pull", "pre", NEW), ("pull", f"{NEW}; reboot")]
)
def test_bad_pull_arguments_are_refused_before_anything_runs(tmp_path, args):
    proc, calls = deploy(tmp_path, "web", *args)
    assert proc.returncode == 2
    assert calls == []
