"""User data, run for real: it writes stack.env, fetches the scripts and starts the bootstrap.

The text is taken from the built template; CloudFormation's values are filled in,
the two absolute directories are moved under a temporary root, and `aws`, `curl`
and `sleep` are stubs that record their calls.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from templates import compute
from tests.instance.instance_harness import stack_env
from tests.support import props, shellchecks

STUB = """#!/bin/bash
printf '%s\\n' "$(basename "$0") $*" >> "$STUB_DIR/calls.log"
case "$(basename "$0") $1 $2" in
  "aws cloudformation describe-stack-resource")
    [ -f "$STUB_DIR/metadata.json" ] || { echo "throttled" >&2; exit 254; }
    cat "$STUB_DIR/metadata.json" ;;
  "curl "*) case "$*" in *instance-id*) printf i-0abc ;; *) printf token ;; esac ;;
esac
exit 0
"""


def user_data_text(template: dict, launch_template: str, values: dict[str, str]) -> str:
    parts = props(template, launch_template)["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        else:
            key = re.search(r"\n(\w+)='$", "".join(out)).group(1)
            out.append(values[key])
    return "".join(out)


def run(text: str, root: Path, metadata: dict | None) -> subprocess.CompletedProcess[str]:
    text = text.replace("/etc/mastodon", f"{root}/etc/mastodon").replace("/opt/mastodon-aws", f"{root}/opt")
    stubs = root / "stubs"
    stubs.mkdir()
    for name in ("aws", "curl", "sleep"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    if metadata is not None:
        (stubs / "metadata.json").write_text(json.dumps(metadata))
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_DIR": str(stubs)}
    script = root / "user-data.sh"
    script.write_text(text)
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30,
                          check=False)


FAKE_SCRIPTS = {
    "bootstrap.sh": '#!/bin/bash\n. "$(dirname "$0")/../etc/mastodon/stack.env"\n'
                    'echo "booted $ROLE" > "$(dirname "$0")/booted"\n',
    "pools.sh": "# sourced\n",
}


@pytest.fixture()
def fake_template(template):
    """The built launch templates' user data, with stand-in scripts (so the test needs no Docker)."""
    env = stack_env("web")
    return compute.user_data(env, FAKE_SCRIPTS, "WebLaunchTemplate").to_dict(), env


def _run_fake(tmp_path, fake_template, metadata):
    user_data, _ = fake_template
    parts = user_data["Fn::Base64"]["Fn::Join"][1]
    text = "".join(p for p in parts)
    return run(text, tmp_path, metadata), tmp_path / "stubs" / "calls.log"


def test_user_data_writes_stack_env_fetches_the_scripts_and_runs_the_bootstrap(tmp_path, fake_template):
    metadata = {"Scripts": FAKE_SCRIPTS, "Digest": compute.scripts_digest(FAKE_SCRIPTS)}
    result, _ = _run_fake(tmp_path, fake_template, metadata)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "opt" / "booted").read_text() == "booted web\n"
    assert os.access(tmp_path / "opt" / "pools.sh", os.X_OK)
    written = (tmp_path / "etc" / "mastodon" / "stack.env").read_text()
    assert "LOCAL_DOMAIN='social.example.com'" in written


def test_scripts_that_do_not_match_the_launch_template_fail_the_signal(tmp_path, fake_template):
    tampered = {**FAKE_SCRIPTS, "bootstrap.sh": "#!/bin/bash\necho other\n"}
    result, calls = _run_fake(tmp_path, fake_template, {"Scripts": tampered})
    assert result.returncode != 0
    assert not (tmp_path / "opt" / "booted").exists()
    signal = [c for c in calls.read_text().splitlines() if "signal-resource" in c]
    assert len(signal) == 1 and "--status FAILURE" in signal[0] and "user-data-digest" in signal[0]


def test_scripts_that_cannot_be_read_fail_the_signal_after_retries(tmp_path, fake_template):
    result, calls = _run_fake(tmp_path, fake_template, None)
    assert result.returncode != 0
    log = calls.read_text().splitlines()
    assert len([c for c in log if "describe-stack-resource" in c]) == 5
    (signal,) = [c for c in log if "signal-resource" in c]
    assert "--status FAILURE" in signal and "user-data-fetch-scripts" in signal
    assert "--logical-resource-id WebGroup" in signal


def test_the_built_user_data_runs_the_real_scripts_digest(template, tmp_path):
    """The template's own user data accepts the template's own scripts (and only them)."""
    env = {**stack_env("worker"), "INSTANCE_SCRIPTS": "WorkerLaunchTemplate"}
    text = user_data_text(template, "WorkerLaunchTemplate", env)
    metadata = template["Resources"]["WorkerLaunchTemplate"]["Metadata"]
    # Stop right after the scripts are in place: the real bootstrap has its own tests.
    text = text.replace("exec ", "echo would exec ")
    result = run(text, tmp_path, metadata)
    assert result.returncode == 0, result.stderr
    assert "would exec" in result.stdout and "bootstrap.sh" in result.stdout
    for name, body in metadata["Scripts"].items():
        assert (tmp_path / "opt" / name).read_text() == body


def test_user_data_passes_every_setting_the_instance_scripts_require(template):
    text = user_data_text(template, "WebLaunchTemplate", {k: "x" for k in stack_env("web")})
    written = set(re.findall(r"^(\w+)='", text, re.M))
    assert written - {"INSTANCE_SCRIPTS"} == set(stack_env("web"))
    required = set()
    for script in ("bootstrap.sh", "deploy.sh", "tootctl.sh"):
        source = (Path(compute.__file__).parent / "instance" / script).read_text()
        for keys in re.findall(r"^ *require_stack_env ((?:[^\n]*\\\n)*[^\n]*)", source, re.M):
            required |= set(keys.replace("\\", " ").split())
    assert "STACK_NAME" in required and "WEB_PORT" in required and "TOOTCTL_DB_POOL" in required
    assert required <= written


def test_user_data_passes_shellcheck(template, tmp_path):
    values = {k: "x" for role in ("web", "worker", "queue") for k in stack_env(role)}
    for name in ("WebLaunchTemplate", "WorkerLaunchTemplate", "QueueWorkerLaunchTemplate"):
        script = tmp_path / f"{name}.sh"
        script.write_text(user_data_text(template, name, values))
        for binary in shellchecks():
            result = subprocess.run([binary, str(script)], capture_output=True, text=True, check=False)
            assert result.returncode == 0, f"{binary}: {result.stdout}"
