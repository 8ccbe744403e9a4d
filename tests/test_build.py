"""build.py: writes the templates, summarizes them, and refuses bad options clearly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import decode_str

import build
from templates import compute
from templates.options import BuildOptions, OptionsError

ROOT = Path(__file__).resolve().parent.parent


def run_build(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "build.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_build_writes_yaml_and_json_of_the_same_template_and_summarizes(tmp_path):
    result = run_build("--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    from_json = json.loads((tmp_path / "mastodon.json").read_text())
    from_yaml, errors = decode_str((tmp_path / "mastodon.yaml").read_text())
    assert not errors
    assert json.loads(json.dumps(from_yaml)) == from_json
    resources = len(from_json["Resources"])
    assert re.search(rf"resources +{resources} of 500", result.stdout)
    assert "51200 inline" in result.stdout and "1 MB from S3" in result.stdout


def test_the_summary_reports_the_real_sizes(tmp_path):
    summary = build.build(BuildOptions(), tmp_path)
    assert summary.json_bytes == len((tmp_path / "mastodon.json").read_bytes()) - 1  # trailing newline
    assert summary.yaml_bytes == len((tmp_path / "mastodon.yaml").read_bytes())
    assert summary.resources <= build.RESOURCE_LIMIT


@pytest.mark.parametrize(
    "version", ["latest", "4.5.6", "v4.2.10", "v4.5", "v4.5.6; rm -rf /", "v4.7.6\n", "v1000.0.0"]
)
def test_a_bad_mastodon_version_is_refused_with_exit_status_2(tmp_path, version):
    result = run_build("--mastodon-version", version, "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert "is not a Mastodon release tag" in result.stderr
    assert not (tmp_path / "mastodon.json").exists()


@pytest.mark.parametrize("version", ["v4.3.0", "v4.7.2", "v4.8.0-rc.1", "v4.10.0"])
def test_release_tags_from_4_3_on_are_accepted(version):
    assert BuildOptions(mastodon_version=version).mastodon_version == version


def test_an_empty_description_is_refused():
    with pytest.raises(OptionsError, match="1 to 1024"):
        BuildOptions(description="")


def test_an_unwritable_output_dir_fails_with_a_message_not_a_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_build("--output-dir", str(blocker / "dist"))
    assert result.returncode == 1
    assert result.stderr.startswith("build.py: error:")
    assert "Traceback" not in result.stderr


def test_build_runs_from_any_directory(tmp_path):
    result = run_build("--output-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_user_data_that_outgrows_ec2s_limit_stops_the_build():
    assets = build.load_assets()
    with pytest.raises(compute.UserDataTooLarge, match="16384"):
        compute.user_data({"ROLE": "web", "NOTE": "x" * 16000}, assets.instance_scripts, "WebLaunchTemplate")


def test_every_instance_script_and_lambda_is_embedded(template_json):
    assets = build.load_assets()
    assert set(assets.instance_scripts) >= {"bootstrap.sh", "pools.sh"}
    assert set(assets.lambdas) == {"app_secrets", "availability_zones", "cloudfront_certificate",
                                   "prefix_list", "rollout", "invalidate", "initial_parameter", "image_push",
                                   "database_settings"}
    for launch_template in ("WebLaunchTemplate", "WorkerLaunchTemplate"):
        embedded = json.loads(template_json)["Resources"][launch_template]["Metadata"]["Scripts"]
        assert embedded == assets.instance_scripts


def test_dist_json_files_are_all_templates_and_the_stack_policy_sits_apart(tmp_path):
    # Tools lint dist/*.json as templates; the stack policy is not one.
    build.build(BuildOptions(), tmp_path)
    for path in tmp_path.glob("*.json"):
        assert "Resources" in json.loads(path.read_text()), path.name
    policy = json.loads((tmp_path / build.STACK_POLICY_NAME).read_text())
    assert any(s["Effect"] == "Deny" for s in policy["Statement"])


def test_a_function_is_inlined_after_the_shared_modules_it_imports_and_theirs(tmp_path):
    (tmp_path / "shared.py").write_text("from lambdas import base\n")
    (tmp_path / "base.py").write_text("X = 1\n")
    (tmp_path / "alone.py").write_text("def lambda_handler(event, context):\n    return 1\n")
    (tmp_path / "fn.py").write_text("from lambdas.shared import y\n\n\ndef lambda_handler(event, context):\n"
                                    "    return y\n")
    assets = build.load_assets(tmp_path, tmp_path)
    assert set(assets.lambdas) == {"alone", "fn"}  # modules without lambda_handler are shared ones
    assert assets.lambdas["alone"] == (tmp_path / "alone.py").read_text()  # nothing shared: as it is
    code = assets.lambdas["fn"]
    assert code.index("_module('lambdas.base'") < code.index("_module('lambdas.shared'") < code.index(
        "_module('lambdas.fn'")
    (tmp_path / "base.py").write_text("from lambdas.shared import z\n")
    with pytest.raises(ValueError, match="imports itself"):
        build.load_assets(tmp_path, tmp_path)
