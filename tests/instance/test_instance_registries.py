"""Your own images (issue 15) on the servers: a pull from the stack's own ECR registry goes
through Amazon's credential helper, checked to answer right before the pull; public
registries stay anonymous; an ECR registry of another account or region is refused by
name before anything changes. Run for real under the stub commands."""

from __future__ import annotations

import json
from pathlib import Path

from templates.options import CUSTOM_TAG_PATTERN
from tests.instance.instance_harness import STUB, VERSION, run_deploy, write_stack_env

OWN = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
ECR_MASTODON, ECR_STREAMING = f"{OWN}/team/mastodon", f"{OWN}/team/mastodon-streaming"
GHCR_STREAMING = "ghcr.io/mastodon/mastodon-streaming"
HELPER = "docker-credential-ecr-login"
TOKEN = "ecr-token-SECRET"


def in_ecr(mastodon: str = ECR_MASTODON, streaming: str = ECR_STREAMING) -> dict[str, str]:
    # Not upstream's images: the version rule is the OCI tag rule (templates/versions.py).
    return {"MASTODON_IMAGE": mastodon, "STREAMING_IMAGE": streaming, "ECR_REGISTRY": OWN,
            "TAG_PATTERN": CUSTOM_TAG_PATTERN}


def sequence(calls: list[dict]) -> list[tuple[str, str]]:
    """The logins and pulls, in order: ("login", registry) and ("pull", image)."""
    found = []
    for call in calls:
        if call["cmd"] == HELPER:
            found.append(("login", call["args"][0] if call["args"] else "get"))
        elif call["cmd"] == "docker" and call["args"][:1] == ["pull"]:
            found.append(("pull", call["args"][1]))
    return found


def configs_at_pull(stub_dir: Path) -> dict[str, str]:
    """Image -> Docker's config.json as the pull found it ("" when there was none)."""
    path = stub_dir / "pull_configs"
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split("\x1f", 1) for line in lines)


def test_public_images_are_pulled_anonymously_with_no_helper(bootstrap):
    run = bootstrap("web")
    assert run.returncode == 0, run.log
    assert [kind for kind, _ in sequence(run.calls)] == ["pull", "pull"]
    assert set(configs_at_pull(run.stub_dir).values()) == {""}
    assert not [args for args in run.commands("dnf") if "amazon-ecr-credential-helper" in args]


def test_an_ecr_image_is_pulled_right_after_the_helper_got_a_token_for_its_registry(bootstrap):
    run = bootstrap("web", stack=in_ecr())
    assert run.returncode == 0, run.log
    assert ["install", "-y", "amazon-ecr-credential-helper"] in run.commands("dnf")
    assert sequence(run.calls) == [
        ("login", "get"), ("pull", f"{ECR_MASTODON}:{VERSION}"),
        ("login", "get"), ("pull", f"{ECR_STREAMING}:{VERSION}"),
    ]
    assert (run.stub_dir / "ecr_logins").read_text().split() == [OWN, OWN]
    expected = json.dumps({"credHelpers": {OWN: "ecr-login"}})
    assert set(configs_at_pull(run.stub_dir).values()) == {expected}
    assert TOKEN not in run.output and TOKEN not in run.log


def test_beside_an_ecr_image_a_ghcr_image_is_pulled_without_a_login(bootstrap):
    run = bootstrap("web", stack=in_ecr(streaming=GHCR_STREAMING))
    assert run.returncode == 0, run.log
    assert sequence(run.calls) == [
        ("login", "get"), ("pull", f"{ECR_MASTODON}:{VERSION}"), ("pull", f"{GHCR_STREAMING}:{VERSION}")]


def test_the_worker_logs_in_for_the_mastodon_image_only(bootstrap):
    run = bootstrap("worker", stack=in_ecr())
    assert run.returncode == 0, run.log
    assert sequence(run.calls) == [("login", "get"), ("pull", f"{ECR_MASTODON}:{VERSION}")]


def test_a_login_refused_once_is_retried(bootstrap):
    run = bootstrap("worker", stack=in_ecr(), ecr_login_fail="1")
    assert run.returncode == 0, run.log
    assert sequence(run.calls) == [("login", "get"), ("login", "get"), ("pull", f"{ECR_MASTODON}:{VERSION}")]


def test_a_failed_login_fails_the_boot_before_the_pull_and_says_why(bootstrap):
    run = bootstrap("worker", stack=in_ecr(), ecr_login_fail="99")
    assert run.returncode != 0
    assert not [call for call in sequence(run.calls) if call[0] == "pull"]
    assert [s["status"] for s in run.signals()] == ["FAILURE"]
    assert f"cannot log in to Amazon ECR ({OWN}) to pull {ECR_MASTODON}:{VERSION}" in run.log
    # The helper's own answer, and what the role needs.
    assert "AccessDeniedException" in run.log and "ecr:GetAuthorizationToken" in run.log


def test_an_ecr_registry_of_another_account_is_refused_before_anything_changes(bootstrap):
    other = "210987654321.dkr.ecr.us-east-1.amazonaws.com/mastodon"
    run = bootstrap("web", stack={"MASTODON_IMAGE": other, "ECR_REGISTRY": ""})
    assert run.returncode != 0
    assert run.commands("dnf") == [] and sequence(run.calls) == []
    assert "210987654321.dkr.ecr.us-east-1.amazonaws.com, which is not this stack's" in run.log
    # What the stack's events show: the failure signal's id carries the gist.
    [signal] = run.signals()
    assert signal["status"] == "FAILURE" and "foreign-ECR-registry" in signal["unique_id"]


def test_an_ecr_registry_of_another_region_is_refused_even_beside_the_stack_s_own(bootstrap):
    other_region = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/streaming"
    run = bootstrap("web", stack=in_ecr(streaming=other_region))
    assert run.returncode != 0
    assert sequence(run.calls) == []
    assert "dkr.ecr.eu-west-1.amazonaws.com, which is not this stack's" in run.log


# --- deploy.sh: the rollout's pulls -------------------------------------------------------

NEW = "v4.7.7-glitch"


def deploy(tmp_path: Path, role: str, *args: str, stack: dict[str, str], **settings: str):
    root, stubs, bin_dir = tmp_path / "root", tmp_path / "stub", tmp_path / "bin"
    for directory in (root / "etc/mastodon", stubs, bin_dir):
        directory.mkdir(parents=True, exist_ok=True)
    write_stack_env(root, role, **stack)
    (root / "etc/mastodon/version.env").write_text(f"MASTODON_VERSION={VERSION}\n")
    for name in ("docker", "systemctl", "curl", "df", HELPER):
        (bin_dir / name).symlink_to(STUB)
    for name, value in settings.items():
        (stubs / name).write_text(value)
    proc, calls = run_deploy(tmp_path, root, stubs, [bin_dir], *args, DEPLOY_RETRY_ATTEMPTS="2")
    return proc, [c for c in calls if c[0] == HELPER or c[:2] == ["docker", "pull"]]


def test_the_rollout_s_pull_ahead_logs_in_before_each_ecr_pull(tmp_path):
    proc, calls = deploy(tmp_path, "web", "pull", NEW, stack=in_ecr())
    assert proc.returncode == 0, proc.stderr
    assert calls == [[HELPER, "get"], ["docker", "pull", f"{ECR_MASTODON}:{NEW}"],
                     [HELPER, "get"], ["docker", "pull", f"{ECR_STREAMING}:{NEW}"]]
    assert TOKEN not in proc.stdout + proc.stderr


def test_a_deploy_whose_login_fails_changes_nothing_and_says_why(tmp_path):
    proc, calls = deploy(tmp_path, "worker", "deploy", NEW, stack=in_ecr(), ecr_login_fail="99")
    assert proc.returncode != 0
    assert not [c for c in calls if c[0] == "docker"]
    assert f"cannot log in to Amazon ECR ({OWN}) to pull {ECR_MASTODON}:{NEW}" in proc.stderr
    assert (tmp_path / "root/etc/mastodon/version.env").read_text() == f"MASTODON_VERSION={VERSION}\n"


def test_a_deploy_from_public_registries_never_calls_the_helper(tmp_path):
    proc, calls = deploy(tmp_path, "web", "pull", "v4.7.7", stack={})
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["docker", "docker"]
