"""Each custom-resource function's inline code runs the modules the tests import.

The build assembles lambdas/custom_resource.py and the function's own module into the
function's ZipFile (templates/functions.assemble). Here each built ZipFile is loaded as
Lambda loads it (index.py in a fresh interpreter, without the project on the path) and
answers a request through the shared module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import resources

LAMBDAS = Path(__file__).resolve().parents[2] / "lambdas"
CUSTOM_RESOURCES = ["app_secrets", "availability_zones", "cloudfront_certificate", "database_settings",
                    "initial_parameter", "prefix_list"]

# Runs in the fresh interpreter: answers are captured instead of PUT, no AWS is reached.
PROBE = """
import json, sys, types, urllib.request
answers = []

class Response:
    status = 200
    def __enter__(self): return self
    def __exit__(self, *args): return None

def urlopen(request, timeout=0):
    answers.append(json.loads(request.data))
    return Response()

urllib.request.urlopen = urlopen
import index
module = sys.modules['lambdas.' + sys.argv[1]]
shared = sys.modules['lambdas.custom_resource']
assert module.handle is shared.handle, 'the function does not use the shared module'
assert index.lambda_handler is module.lambda_handler
event = {'RequestType': 'Replace', 'ResponseURL': 'https://example.invalid/answer', 'StackId': 's',
         'RequestId': 'r', 'LogicalResourceId': 'L', 'ResourceType': 'Custom::X',
         'ResourceProperties': {}}
context = types.SimpleNamespace(function_name='f', memory_limit_in_mb=256, invoked_function_arn='arn',
                                aws_request_id='r', get_remaining_time_in_millis=lambda: 60_000)
index.lambda_handler(event, context)
print(json.dumps(answers))
"""


def inline_code(template: dict[str, Any], module: str) -> str:
    entry = f"lambda_handler = _sys.modules['lambdas.{module}'].lambda_handler"
    functions = resources(template, "AWS::Lambda::Function").values()
    (code,) = [f["Properties"]["Code"]["ZipFile"] for f in functions
               if entry in f["Properties"]["Code"].get("ZipFile", "")]
    return str(code)


def test_every_function_that_imports_the_shared_module_is_a_custom_resource_listed_here(template):
    assembled = {name for name in CUSTOM_RESOURCES if inline_code(template, name)}
    importers = {path.stem for path in LAMBDAS.glob("*.py")
                 if "from lambdas.custom_resource import" in path.read_text()}
    assert assembled == importers == set(CUSTOM_RESOURCES)


@pytest.mark.parametrize("module", CUSTOM_RESOURCES)
def test_the_inline_code_runs_the_shared_module_in_a_fresh_interpreter(template, tmp_path, module):
    code = inline_code(template, module)
    for name in ("custom_resource", module):
        assert (LAMBDAS / f"{name}.py").read_text() in code, f"{name}.py is not inlined verbatim"
    (tmp_path / "index.py").write_text(code)
    env = {"POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_SERVICE_NAME": module,
           "AWS_DEFAULT_REGION": "us-east-1", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", PROBE, module], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (answer,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["Status"] == "FAILED"
    assert "Replace" in answer["Reason"]
    assert answer["RequestId"] == "r"
