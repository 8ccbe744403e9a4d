"""The rollout state machine, as the template declares it, run by moto's Step Functions interpreter.

simulation/world.py runs the definition through an interpreter of our own; this module checks
that definition against a second, independent one: moto's port of the LocalStack ASL
engine (`mock_aws(config={"stepfunctions": {"execute_state_machine": True}})`).

What is exercised, for real, by moto:
- the definition taken from the built template (RolloutStateMachine's Definition),
  with its DefinitionSubstitutions replaced textually, as CloudFormation does;
- the Configure Pass state: its Parameters, including `$$.Execution.Id` and
  `$$.StateMachine.Id` from the context object; the EventBridge event given as
  execution input is dropped;
- every Task's Resource (which function is invoked) and Parameters (`action`,
  `phase`, `state.$: $`), seen in the LambdaFunctionScheduled events; a task's
  result replacing the whole state (no ResultPath), seen in the next task's input;
- every Choice rule and Default on `$.next`, every `Next`, the Wait states'
  `SecondsPath: $.wait` (moto fails the execution when that path is missing or not a
  non-negative integer; the answers below carry "wait": 0 and no other top-level
  number, so no test sleeps), the Succeed and Fail states (error and cause);
- Catch on States.ALL and its Next for Begin, PreMigrate, Web, Worker, Record, Verify,
  InvalidateEarly, PostMigrate, FinalCheck, Invalidate, InvalidateCheck, Rollback and Finish (not
  Validate), and the ResultPath ($.error,
  $.warning, $.rollback_error) seen in the next task's input; Finish's
  $.finish_error is not observable (its Catch leads to the Fail state, whose input
  moto records but no task receives), so only its route is asserted.

What moto does not do, and so is not asserted here:
- Lambda tasks do not run our code (no Docker): moto's lambda-simple backend pops
  the next answer from one queue shared by every function, filled through moto's API
  (POST /moto-api/static/lambda-simple/response), or echoes the payload when the
  queue is empty. The functions' behaviour is tested by test_rollout.py and the
  Lambda tests, which call the real handlers.
- lambda-simple never reports a function error. The one workaround here: a wrapper
  around LambdaSimpleBackend.invoke sets the `X-Amz-Function-Error: Unhandled` header
  when the queued answer is a Lambda error payload ({"errorType", "errorMessage"}),
  which is how AWS Lambda reports an unhandled exception. Everything after that
  header (error name, Catch, ResultPath, Cause) is moto's own handling.
- Retry: a retried error (LAMBDA_ERRORS) would sleep IntervalSeconds with full
  jitter, for real, so no test raises one; the Retry policy is checked statically in
  test_pipeline_template.py. The errors raised here (RuntimeError) are not retried.
- TimeoutSeconds (moto records 90 s in the history; invocations return at once),
  the length of a Wait (always 0 s here), the state machine's role, logging
  configuration and IAM: none is enforced by moto.
- moto names an execution started without a name "None" (AWS uses a UUID), so
  executions are started with a name.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend, lambda_simple_backends
from moto.core import DEFAULT_ACCOUNT_ID

import tests.lambdas.conftest  # noqa: F401  (fake AWS credentials and region first)
from templates.compute import BOOT_WORST_CASE_SECONDS, DEPLOY_SCRIPT
from templates.load_balancing import DEREGISTRATION_DELAY_SECONDS, SETTLE_SECONDS
from templates.options import MASTODON_IMAGE, RELEASE_TAG_PATTERN, STREAMING_IMAGE
from tests.support import props

REGION = "us-east-1"
MOTO_CONFIG: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
LAMBDA_RESULTS = "http://motoapi.amazonaws.com/moto-api/static/lambda-simple/response"
# CloudFormation names the functions (the template sets no FunctionName).
FUNCTIONS = {
    "RolloutFunctionArn": "mastodon-RolloutFunction-Q1W2E3R4T5Y6",
    "InvalidateFunctionArn": "mastodon-InvalidateFunction-A1S2D3F4G5H6",
}
# What the other DefinitionSubstitutions resolve to in a stack.
TARGET_GROUPS = [
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/mastodon-web/0123456789abcdef",
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/mastodon-streaming/fedcba9876543210",
]
RESOLVED = {
    "WebGroup": "mastodon-WebAutoScalingGroup-1AB2CD3EF4GH",
    "WorkerGroup": "mastodon-WorkerAutoScalingGroup-5IJ6KL7MN8OP",
    "WebTargetGroup": TARGET_GROUPS[0],
    "StreamingTargetGroup": TARGET_GROUPS[1],
    "DesiredParameter": "/mastodon/mastodon/desired-version",
    "DeployedParameter": "/mastodon/mastodon/deployed-version",
    "StateParameter": "/mastodon/mastodon/rollout-last",
    "BatchSize": "2",
    "TopicArn": "arn:aws:sns:us-east-1:123456789012:mastodon-AlertTopic-QRST",
    "DistributionId": "E2EXAMPLE0CDN",
    "QueueGroup": "",  # what Fn::If resolves to while the stack has no queue workers
    "WebImage": MASTODON_IMAGE,
    "StreamingImage": STREAMING_IMAGE,
    "TagPattern": RELEASE_TAG_PATTERN,  # what Fn::If resolves to with upstream's images
    "RollRepushed": "false",  # what Fn::If resolves to without upgrade on push
}
# The config every step must receive: each substitution in its own key.
CONFIG = {
    "web_group": RESOLVED["WebGroup"],
    "worker_group": RESOLVED["WorkerGroup"],
    "target_groups": TARGET_GROUPS,
    "desired_parameter": RESOLVED["DesiredParameter"],
    "deployed_parameter": RESOLVED["DeployedParameter"],
    "handled_parameter": RESOLVED["StateParameter"],
    "batch_size": "2",
    "drain_seconds": DEREGISTRATION_DELAY_SECONDS,
    "topic_arn": RESOLVED["TopicArn"],
    "distribution_id": RESOLVED["DistributionId"],
    "images": [RESOLVED["WebImage"], RESOLVED["StreamingImage"]],
    "settle_seconds": SETTLE_SECONDS,
    "boot_grace": BOOT_WORST_CASE_SECONDS,
    "tag_pattern": RESOLVED["TagPattern"],
    "deploy_script": DEPLOY_SCRIPT,
    "queue_group": RESOLVED["QueueGroup"],
    "roll_repushed": RESOLVED["RollRepushed"],
}
# What EventBridge hands the execution (Configure must not pass it on).
EVENT = {
    "source": "aws.ssm",
    "detail-type": "Parameter Store Change",
    "detail": {"name": RESOLVED["DesiredParameter"], "operation": "Update"},
}
# Each task state: (function, action, phase), as its Resource and Parameters must say.
TASKS = {
    "Begin": ("RolloutFunctionArn", "begin", None),
    "Validate": ("RolloutFunctionArn", "validate", None),
    "PreMigrate": ("RolloutFunctionArn", "migrate", "pre"),
    "Web": ("RolloutFunctionArn", "web", None),
    "Worker": ("RolloutFunctionArn", "worker", None),
    "PostMigrate": ("RolloutFunctionArn", "migrate", "post"),
    "Record": ("RolloutFunctionArn", "record", None),
    "Verify": ("RolloutFunctionArn", "verify", "pre"),
    "FinalCheck": ("RolloutFunctionArn", "verify", "final"),
    "InvalidateEarly": ("InvalidateFunctionArn", "start", None),
    "Invalidate": ("InvalidateFunctionArn", "start", None),
    "InvalidateCheck": ("InvalidateFunctionArn", "check", None),
    "Rollback": ("RolloutFunctionArn", "rollback", None),
    "Finish": ("RolloutFunctionArn", "finish", None),
}
# Where a task's Catch puts the error (ResultPath), when not at $.error.
CAUGHT_AT = {
    "InvalidateEarly": "warning",
    "Invalidate": "warning",
    "InvalidateCheck": "warning",
    "Rollback": "rollback_error",
    "Finish": "finish_error",
}
FAILED = ("RolloutFailed", "See the notification and the rollout logs")


@dataclass(frozen=True)
class Raise:
    """A task answer: the function raised (an unhandled error, as Lambda reports it)."""

    error: str
    message: str

    def payload(self) -> str:
        """Compact, as moto re-serialises it: the Cause is then the payload verbatim, as in AWS."""
        return json.dumps({"errorType": self.error, "errorMessage": self.message}, separators=(",", ":"))


_invoke = LambdaSimpleBackend.invoke


def _invoke_reporting_errors(self: Any, *args: Any) -> Any:
    """lambda-simple's invoke, plus the function-error header for a queued error payload."""
    *_, response_headers = args
    payload = _invoke(self, *args)
    try:
        answer = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(answer, dict) and set(answer) == {"errorType", "errorMessage"}:
        response_headers["x-amz-function-error"] = "Unhandled"
    return payload


@dataclass
class Run:
    status: str
    error: str | None
    cause: str | None
    output: Any
    entered: list[str]  # every state entered, in order
    scheduled: list[tuple[str, str, dict[str, Any]]]  # (task state, function ARN, input)
    history: list[dict[str, Any]] = field(repr=False)


@dataclass
class Machine:
    arn: str
    functions: dict[str, str]  # substitution key -> function ARN
    runs: int = 0

    def run(self, script: list[tuple[str, str | Raise]], hang_guard: float = 120.0) -> Run:
        """Queues one answer per task of `script` ((task state, next or Raise)), runs an execution.

        Checks the data flow on the way: each task got the right function, action and
        phase, and as state exactly the previous answer (or the Configure output), with
        a caught error added at the task's ResultPath.
        """
        self.runs += 1
        name = f"rollout-{self.runs}"
        execution = f"{self.arn.replace(':stateMachine:', ':execution:')}:{name}"
        state: dict[str, Any] = {"config": CONFIG, "execution": execution, "state_machine": self.arn}
        queue = lambda_simple_backends[DEFAULT_ACCOUNT_ID][REGION].lambda_simple_results_queue
        queue.clear()  # what an earlier, failed test left
        answers: list[str] = []
        expected = []
        for step, (task, outcome) in enumerate(script):
            function, action, phase = TASKS[task]
            task_input = {"action": action, "state": state, **({"phase": phase} if phase else {})}
            expected.append((task, self.functions[function], task_input))
            if isinstance(outcome, Raise):
                answers.append(outcome.payload())
                caught = {"Error": outcome.error, "Cause": outcome.payload()}
                state = {**state, CAUGHT_AT.get(task, "error"): caught}
            else:  # every top-level value but "wait" is a string: SecondsPath must find $.wait
                state = {**state, "step": f"{task}#{step}", "next": outcome, "wait": 0}
                answers.append(json.dumps(state))
        queued = requests.post(LAMBDA_RESULTS, json={"results": answers, "region": REGION}, timeout=5)
        assert queued.status_code == 201, queued.text

        sfn = boto3.client("stepfunctions", region_name=REGION)
        started = sfn.start_execution(stateMachineArn=self.arn, name=name, input=json.dumps(EVENT))
        assert started["executionArn"] == execution
        # A loop shows as a history far longer than the script could make (each task
        # adds a handful of events); a Wait that sleeps makes no progress at all. The
        # clock only guards against a hang, far above what a loaded machine needs.
        most_events = 20 * (len(script) + 5)
        until = time.monotonic() + hang_guard
        while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            events = len(sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"])
            if events > most_events or time.monotonic() > until:
                sfn.stop_execution(executionArn=execution)  # lest it eat the next test's answers
                raise AssertionError(f"the execution did not end after {events} events: a loop, or a Wait "
                                     "that sleeps?")
            time.sleep(0.005)
        history = [
            event
            for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution)
            for event in page["events"]
        ]
        run = Run(
            status=described["status"],
            error=described.get("error"),
            cause=described.get("cause"),
            output=json.loads(described["output"]) if "output" in described else None,
            entered=[
                e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e
            ],
            scheduled=_scheduled(history),
            history=history,
        )
        # Before the data flow: a wrong transition shows best as the path it took.
        assert [s for s in run.entered if s in TASKS] == [task for task, _ in script], run.entered
        assert run.scheduled == expected
        assert queue == [], "answers left over: fewer tasks ran than expected"
        return run


def _scheduled(history: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    found, task = [], ""
    for event in history:
        if event["type"] == "TaskStateEntered":
            task = event["stateEnteredEventDetails"]["name"]
        elif event["type"] == "LambdaFunctionScheduled":
            details = event["lambdaFunctionScheduledEventDetails"]
            found.append((task, details["resource"], json.loads(details["input"])))
    return found


def _resolved_definition(template: dict[str, Any], functions: dict[str, str]) -> str:
    """The Definition with its DefinitionSubstitutions applied, as CloudFormation does."""
    machine = props(template, "RolloutStateMachine")
    values = {**RESOLVED, **functions}
    assert set(machine["DefinitionSubstitutions"]) == set(values)
    text = json.dumps(machine["Definition"])
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    assert "${" not in text, "a placeholder has no substitution"
    return text


@pytest.fixture(scope="module")
def machine(template: dict[str, Any]) -> Iterator[Machine]:
    """One mock for the module: each run has its own execution and empties the answer queue."""
    with pytest.MonkeyPatch.context() as patch, mock_aws(config=MOTO_CONFIG):
        patch.setattr(LambdaSimpleBackend, "invoke", _invoke_reporting_errors)
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="rollout", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("index.py", "def lambda_handler(event, context):\n    return event\n")
        awslambda = boto3.client("lambda", region_name=REGION)
        functions = {
            key: awslambda.create_function(
                FunctionName=name,
                Runtime="python3.13",
                Role=role,
                Handler="index.lambda_handler",
                Code={"ZipFile": code.getvalue()},
            )["FunctionArn"]
            for key, name in FUNCTIONS.items()
        }
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = sfn.create_state_machine(
            name="RolloutStateMachine-Z9Y8X7",
            definition=_resolved_definition(template, functions),
            roleArn=role,
        )["stateMachineArn"]
        yield Machine(arn, functions)


STRAIGHT = [
    ("Begin", "go"),
    ("Validate", "go"),
    ("PreMigrate", "done"),
    ("Web", "done"),
    ("Worker", "done"),
    ("Record", "done"),
    ("Verify", "done"),
    ("InvalidateEarly", "wait"),
    ("PostMigrate", "done"),
    ("FinalCheck", "done"),
    ("InvalidateCheck", "done"),
    ("Finish", "done"),
]


def test_a_rollout_goes_from_begin_through_every_phase_to_done(machine):
    run = machine.run(STRAIGHT)
    assert run.status == "SUCCEEDED", (run.error, run.cause)
    assert run.entered == [
        "Configure",
        "Begin", "BeginNext",
        "Validate", "ValidateNext",
        "PreMigrate", "PreMigrateNext",
        "Web", "WebNext",
        "Worker", "WorkerNext",
        "Record", "RecordNext",
        "Verify", "VerifyNext",
        "InvalidateEarly",
        "PostMigrate", "PostMigrateNext",
        "FinalCheck", "FinalCheckNext",
        "InvalidateCheck", "InvalidateNext",
        "Finish", "FinishNext",
        "Done",
    ]  # fmt: skip
    assert run.output["step"] == "Finish#11" and run.output["config"] == CONFIG


def test_every_wait_loop_the_convergence_and_a_newer_version_take_their_routes(machine):
    run = machine.run(
        [
            ("Begin", "queued"),  # an older rollout runs
            ("Begin", "go"),
            ("Validate", "go"),
            ("PreMigrate", "wait"),
            ("PreMigrate", "done"),
            ("Web", "wait"),
            ("Web", "done"),
            ("Worker", "wait"),
            ("Worker", "done"),
            ("Record", "done"),
            ("Verify", "wait"),  # a server launched meanwhile is brought to the version; settling
            ("Verify", "done"),
            ("InvalidateEarly", "retry"),  # CloudFront throttled the request: the migrations go on
            ("PostMigrate", "wait"),
            ("PostMigrate", "done"),
            ("FinalCheck", "wait"),
            ("FinalCheck", "done"),
            ("InvalidateCheck", "retry"),  # nothing started yet, and CloudFront throttles again
            ("Invalidate", "wait"),
            ("InvalidateCheck", "wait"),
            ("InvalidateCheck", "done"),
            ("Finish", "again"),  # the desired version changed during the rollout
            ("Begin", "noop"),
        ]
    )
    assert run.status == "SUCCEEDED", (run.error, run.cause)
    assert run.entered == [
        "Configure",
        "Begin", "BeginNext", "Queued",
        "Begin", "BeginNext",
        "Validate", "ValidateNext",
        "PreMigrate", "PreMigrateNext", "PreMigrateWait",
        "PreMigrate", "PreMigrateNext",
        "Web", "WebNext", "WebWait",
        "Web", "WebNext",
        "Worker", "WorkerNext", "WorkerWait",
        "Worker", "WorkerNext",
        "Record", "RecordNext",
        "Verify", "VerifyNext", "VerifyWait",
        "Verify", "VerifyNext",
        "InvalidateEarly",
        "PostMigrate", "PostMigrateNext", "PostMigrateWait",
        "PostMigrate", "PostMigrateNext",
        "FinalCheck", "FinalCheckNext", "FinalCheckWait",
        "FinalCheck", "FinalCheckNext",
        "InvalidateCheck", "InvalidateNext", "InvalidateRetry",
        "Invalidate", "InvalidateNext", "InvalidateWait",
        "InvalidateCheck", "InvalidateNext", "InvalidateWait",
        "InvalidateCheck", "InvalidateNext",
        "Finish", "FinishNext",
        "Begin", "BeginNext",
        "Done",
    ]  # fmt: skip


BOOM = Raise("RuntimeError", "no worker instance is in service")
ROLLED_BACK = ["Rollback", "RollbackNext", "Finish", "FinishNext", "Failed"]
START = ["Configure", "Begin", "BeginNext", "Validate", "ValidateNext"]
UP_TO_WEB = [*START, "PreMigrate", "PreMigrateNext", "Web", "WebNext"]
VERIFIED = [*UP_TO_WEB, "Worker", "WorkerNext", "Record", "RecordNext", "Verify", "VerifyNext"]
SWITCHED = [*VERIFIED, "InvalidateEarly"]
GO = [("Begin", "go"), ("Validate", "go")]
FAILURES = {
    # name: (script, states entered, final status)
    "a web step reports failed, the rollback waits once": (
        [*GO, ("PreMigrate", "done"), ("Web", "wait"), ("Web", "failed"),
         ("Rollback", "wait"), ("Rollback", "done"), ("Finish", "failed")],
        [*START, "PreMigrate", "PreMigrateNext", "Web", "WebNext", "WebWait", "Web", "WebNext",
         "Rollback", "RollbackNext", "RollbackWait", *ROLLED_BACK],
        "FAILED",
    ),
    "an unknown next value rolls back (the Choice default)": (
        [*GO, ("PreMigrate", "exploded"), ("Rollback", "done"), ("Finish", "failed")],
        [*START, "PreMigrate", "PreMigrateNext", *ROLLED_BACK],
        "FAILED",
    ),
    "the pre-deployment migrations raise": (
        [*GO, ("PreMigrate", BOOM), ("Rollback", "done"), ("Finish", "failed")],
        [*START, "PreMigrate", *ROLLED_BACK],
        "FAILED",
    ),
    "the worker step raises": (
        [*GO, ("PreMigrate", "done"), ("Web", "done"), ("Worker", BOOM),
         ("Rollback", "done"), ("Finish", "failed")],
        [*UP_TO_WEB, "Worker", *ROLLED_BACK],
        "FAILED",
    ),
    "an invalid tag ends without touching a server": (
        [("Begin", "go"), ("Validate", "failed"), ("Finish", "failed")],
        [*START, "Finish", "FinishNext", "Failed"],
        "FAILED",
    ),
    "begin raises": (
        [("Begin", BOOM), ("Finish", "failed")],
        ["Configure", "Begin", "Finish", "FinishNext", "Failed"],
        "FAILED",
    ),
    "a failed verification before the post-deployment migrations rolls back": (
        [*GO, ("PreMigrate", "done"), ("Web", "done"), ("Worker", "done"), ("Record", "done"),
         ("Verify", "failed"), ("Rollback", "done"), ("Finish", "failed")],
        [*VERIFIED, *ROLLED_BACK],
        "FAILED",
    ),
    "a raising record rolls back": (
        [*GO, ("PreMigrate", "done"), ("Web", "done"), ("Worker", "done"), ("Record", BOOM),
         ("Rollback", "done"), ("Finish", "failed")],
        [*UP_TO_WEB, "Worker", "WorkerNext", "Record", *ROLLED_BACK],
        "FAILED",
    ),
    "failed post-deployment migrations are reported, not rolled back": (
        [*STRAIGHT[:8], ("PostMigrate", "failed"), ("Finish", "failed")],
        [*SWITCHED, "PostMigrate", "PostMigrateNext", "Finish", "FinishNext", "Failed"],
        "FAILED",
    ),
    "raising post-deployment migrations are reported, not rolled back": (
        [*STRAIGHT[:8], ("PostMigrate", BOOM), ("Finish", "failed")],
        [*SWITCHED, "PostMigrate", "Finish", "FinishNext", "Failed"],
        "FAILED",
    ),
    "a failed final check is reported, not rolled back": (
        [*STRAIGHT[:9], ("FinalCheck", "failed"), ("Finish", "failed")],
        [*SWITCHED, "PostMigrate", "PostMigrateNext", "FinalCheck", "FinalCheckNext",
         "Finish", "FinishNext", "Failed"],
        "FAILED",
    ),
    "a raising first invalidation request is a warning, the migrations go on": (
        [*STRAIGHT[:7], ("InvalidateEarly", BOOM), ("PostMigrate", "done"), ("FinalCheck", "done"),
         ("InvalidateCheck", "done"), ("Finish", "done")],
        [*SWITCHED, "PostMigrate", "PostMigrateNext", "FinalCheck", "FinalCheckNext",
         "InvalidateCheck", "InvalidateNext", "Finish", "FinishNext", "Done"],
        "SUCCEEDED",
    ),
    "a raising invalidation request is a warning, the rollout succeeds": (
        [*STRAIGHT[:10], ("InvalidateCheck", "retry"), ("Invalidate", BOOM), ("Finish", "done")],
        [*SWITCHED, "PostMigrate", "PostMigrateNext", "FinalCheck", "FinalCheckNext",
         "InvalidateCheck", "InvalidateNext", "InvalidateRetry", "Invalidate",
         "Finish", "FinishNext", "Done"],
        "SUCCEEDED",
    ),
    "a raising invalidation check is a warning, the rollout succeeds": (
        [*STRAIGHT[:10], ("InvalidateCheck", BOOM), ("Finish", "done")],
        [*SWITCHED, "PostMigrate", "PostMigrateNext", "FinalCheck", "FinalCheckNext",
         "InvalidateCheck", "Finish", "FinishNext", "Done"],
        "SUCCEEDED",
    ),
    "a raising rollback still notifies": (
        [*GO, ("PreMigrate", "failed"), ("Rollback", BOOM), ("Finish", "failed")],
        [*START, "PreMigrate", "PreMigrateNext", "Rollback", "Finish", "FinishNext", "Failed"],
        "FAILED",
    ),
    "a raising finish fails the execution": (
        [("Begin", "go"), ("Validate", "failed"), ("Finish", BOOM)],
        [*START, "Finish", "Failed"],
        "FAILED",
    ),
}  # fmt: skip


@pytest.mark.parametrize("script, entered, status", FAILURES.values(), ids=FAILURES.keys())
def test_failures_take_the_route_the_definition_promises(machine, script, entered, status):
    run = machine.run(script)
    assert run.entered == entered
    assert run.status == status
    if status == "FAILED":
        assert (run.error, run.cause) == FAILED


def test_a_raised_error_reaches_the_rollback_at_error_with_its_type_and_message(machine):
    run = machine.run(
        [*GO, ("PreMigrate", "done"), ("Web", BOOM), ("Rollback", "done"), ("Finish", "failed")]
    )
    # run() compared every task input with the expected data flow; this spells out one.
    (rollback,) = [state for task, _, state in run.scheduled if task == "Rollback"]
    error = rollback["state"]["error"]
    assert error["Error"] == "RuntimeError"
    assert json.loads(error["Cause"])["errorMessage"] == "no worker instance is in service"
    assert rollback["state"]["step"] == "PreMigrate#2", "the failed task's input state, plus the error"
