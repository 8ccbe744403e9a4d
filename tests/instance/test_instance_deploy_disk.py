"""deploy.sh makes room on the 8 GiB root volume before a pull, or fails before it changes anything.

Runs deploy.sh for real under the stub commands (df among them: the free space each
call reports is scripted); tests/pipeline/test_deploy_script.py covers the rest of it.
"""

from __future__ import annotations

from pathlib import Path

from tests.instance.instance_harness import STUB, run_deploy, write_stack_env

OLDER, OLD, NEW = "v4.5.9", "v4.6.2", "v4.7.6"
MASTODON, STREAMING = "ghcr.io/mastodon/mastodon", "ghcr.io/mastodon/mastodon-streaming"
GIB_KIB = 1024 * 1024
# A server running OLD that still holds OLDER, and an image an operator pulled by hand.
ON_DISK = [f"{MASTODON}:{OLDER}", f"{STREAMING}:{OLDER}", f"{MASTODON}:{OLD}", f"{STREAMING}:{OLD}",
           "public.ecr.aws/docker/library/postgres:17", f"{MASTODON}:<none>"]


def deploy(tmp_path: Path, role: str, *args: str, **settings: str | list[str]):
    root, stubs, bin_dir = tmp_path / "root", tmp_path / "stub", tmp_path / "bin"
    for directory in (root / "etc/mastodon", stubs, bin_dir):
        directory.mkdir(parents=True, exist_ok=True)
    write_stack_env(root, role)
    (root / "etc/mastodon/version.env").write_text(f"MASTODON_VERSION={OLD}\n")
    for name in ("docker", "systemctl", "curl", "df"):
        (bin_dir / name).symlink_to(STUB)
    for name, value in settings.items():
        (stubs / name).write_text("\n".join(value) + "\n" if isinstance(value, list) else value)
    return run_deploy(tmp_path, root, stubs, [bin_dir], *args, DEPLOY_RETRY_ATTEMPTS="2")


def version(tmp_path: Path) -> str:
    return (tmp_path / "root/etc/mastodon/version.env").read_text()


def removed(calls: list[list[str]]) -> list[str]:
    return [c[-1] for c in calls if c[:2] == ["docker", "rmi"]]


def first(calls: list[list[str]], *prefix: str) -> int:
    return next(i for i, c in enumerate(calls) if c[: len(prefix)] == list(prefix))


def test_with_room_a_deploy_measures_and_removes_nothing_before_pulling(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", NEW, images=ON_DISK)
    assert proc.returncode == 0, proc.stderr
    assert first(calls, "df") < first(calls, "docker", "pull")
    assert ["docker", "image", "prune", "--force"] not in calls
    before_pull = calls[: first(calls, "docker", "pull")]
    assert not [c for c in before_pull if c[:2] in (["docker", "rmi"], ["docker", "images"])]


def test_short_of_disk_a_deploy_removes_unused_images_but_never_the_running_ones(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", NEW, images=ON_DISK,
                         running_images=["public.ecr.aws/docker/library/postgres:17"],
                         free_kib=[str(GIB_KIB), str(3 * GIB_KIB)])
    assert proc.returncode == 0, proc.stderr
    pulled = first(calls, "docker", "pull")
    assert ["docker", "image", "prune", "--force"] in calls[:pulled], "dangling layers go first"
    assert removed(calls[:pulled]) == [f"{MASTODON}:{OLDER}", f"{STREAMING}:{OLDER}"], (
        "the running version and what a running container uses stay")
    assert "3072 MiB free" in proc.stderr
    assert version(tmp_path) == f"MASTODON_VERSION={NEW}\n"


def test_still_short_of_disk_a_deploy_fails_with_the_reason_before_touching_anything(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", NEW, images=ON_DISK, free_kib=str(GIB_KIB + 512 * 1024))
    assert proc.returncode != 0
    reason = proc.stderr.strip().splitlines()[-1]
    assert "not enough disk to pull" in reason and f"{MASTODON}:{NEW}" in reason
    assert "only 1536 MiB free" in reason and "a pull needs 2048 MiB" in reason
    assert not [c for c in calls if c[:2] == ["docker", "pull"] or c[0] == "systemctl"]
    assert version(tmp_path) == f"MASTODON_VERSION={OLD}\n", "the server keeps running what it ran"
    assert f"{MASTODON}:{OLD}" not in removed(calls) and f"{STREAMING}:{OLD}" not in removed(calls)


def test_the_worker_checks_before_its_pre_deployment_migration_pull_too(tmp_path):
    proc, calls = deploy(tmp_path, "worker", "migrate", "pre", NEW, images=ON_DISK, free_kib=str(GIB_KIB))
    assert proc.returncode != 0
    assert "not enough disk to pull" in proc.stderr.strip().splitlines()[-1]
    assert not [c for c in calls if c[:2] in (["docker", "pull"], ["docker", "run"])]


def test_an_image_already_on_disk_needs_no_room(tmp_path):
    # The worker's deploy after its pre-deployment migration pulled NEW: nothing to download.
    proc, calls = deploy(tmp_path, "worker", "deploy", NEW, images=[*ON_DISK, f"{MASTODON}:{NEW}"],
                         free_kib=str(GIB_KIB))
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c[0] == "df"]
    assert version(tmp_path) == f"MASTODON_VERSION={NEW}\n"
