"""Alarms catch what breaks a Mastodon instance and reach the admin; the dashboard shows them.

A failed rollout reaches the admin too, through an EventBridge rule (tests at the end),
and the alert topic's policy lets both kinds of publisher in, and no one else.
"""

from __future__ import annotations

import json
import re

import pytest

from templates import capacity, sidekiq
from tests.support import props, refs, resources


def _alarms(template):
    """The alerts: every alarm but those that drive a scaling policy (tested in test_scaling)."""
    policies = set(resources(template, "AWS::AutoScaling::ScalingPolicy"))
    return {name: alarm for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items()
            if not any(action.get("Ref") in policies for action in alarm["Properties"]["AlarmActions"])}


def _find(template, namespace, metric, dimensions):
    """The alarms on a metric whose dimensions are exactly those given (partial values)."""
    found = []
    for name, alarm in _alarms(template).items():
        p = alarm["Properties"]
        actual = {d["Name"]: d["Value"] for d in p.get("Dimensions", [])}
        same_metric = (p.get("Namespace"), p.get("MetricName")) == (namespace, metric)
        if same_metric and set(actual) == set(dimensions) \
                and all(v is None or actual[k] == v for k, v in dimensions.items()):
            found.append((name, p))
    return found


DATABASE = {"DBInstanceIdentifier": {"Ref": "Database"}}
# symptom, namespace, metric, dimensions (None: any value), breaching direction
WHAT_BREAKS_MASTODON = [
    ("load balancer 5xx", "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", {"LoadBalancer": None}, "Greater"),
    ("Mastodon 5xx", "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", {"LoadBalancer": None}, "Greater"),
    *[(f"{group} targets unhealthy", "AWS/ApplicationELB", "UnHealthyHostCount",
       {"TargetGroup": {"Fn::GetAtt": [group, "TargetGroupFullName"]}, "LoadBalancer": None}, "Greater")
      for group in ("WebTargetGroup", "StreamingTargetGroup")],
    *[(f"no healthy {group} target", "AWS/ApplicationELB", "HealthyHostCount",
       {"TargetGroup": {"Fn::GetAtt": [group, "TargetGroupFullName"]}, "LoadBalancer": None}, "Less")
      for group in ("WebTargetGroup", "StreamingTargetGroup")],
    ("database CPU", "AWS/RDS", "CPUUtilization", DATABASE, "Greater"),
    ("database storage", "AWS/RDS", "FreeStorageSpace", DATABASE, "Less"),
    ("database connections", "AWS/RDS", "DatabaseConnections", DATABASE, "Greater"),
    ("database memory", "AWS/RDS", "FreeableMemory", DATABASE, "Less"),
    ("cache memory", "AWS/ElastiCache", "DatabaseMemoryUsagePercentage",
     {"CacheClusterId": {"Fn::Join": ["", [{"Ref": "Cache"}, "-001"]]}}, "Greater"),
    ("cache evictions", "AWS/ElastiCache", "Evictions",
     {"CacheClusterId": {"Fn::Join": ["", [{"Ref": "Cache"}, "-001"]]}}, "Greater"),
    ("Sidekiq worker down", "AWS/AutoScaling", "GroupInServiceInstances",
     {"AutoScalingGroupName": {"Ref": "WorkerAutoScalingGroup"}}, "Less"),
    # With queue workers (the option's alarms exist only then).
    ("Sidekiq jobs wait too long", {"Fn::Sub": "Mastodon/${AWS::StackName}"}, sidekiq.OLDEST_JOB_METRIC, {},
     "Greater"),
    ("no Sidekiq process alive", {"Fn::Sub": "Mastodon/${AWS::StackName}"}, sidekiq.PROCESSES_METRIC, {},
     "Less"),
]


@pytest.mark.parametrize(("symptom", "namespace", "metric", "dimensions", "direction"), WHAT_BREAKS_MASTODON,
                         ids=[case[0] for case in WHAT_BREAKS_MASTODON])
def test_an_alarm_watches_what_breaks_mastodon(template, symptom, namespace, metric, dimensions, direction):
    found = _find(template, namespace, metric, dimensions)
    assert len(found) == 1, f"{symptom}: expected one alarm, found {[n for n, _ in found]}"
    _, alarm = found[0]
    assert alarm["ComparisonOperator"].startswith(direction), symptom


def test_every_alarm_notifies_the_alert_email_when_it_fires_and_recovers(template):
    topic = props(template, "AlertTopic")
    assert topic["Subscription"] == [{"Protocol": "email", "Endpoint": {"Ref": "AlertEmail"}}]
    assert _alarms(template)
    for name, alarm in _alarms(template).items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}], name
        assert alarm["Properties"]["OKActions"] == [{"Ref": "AlertTopic"}], name


def test_every_alarm_has_a_sensible_window_and_says_what_to_do(template):
    for name, alarm in _alarms(template).items():
        p = alarm["Properties"]
        # A metric-math alarm reads its period from the metrics it queries.
        periods = {q["MetricStat"]["Period"] for q in p.get("Metrics", []) if "MetricStat" in q}
        period = p["Period"] if "Period" in p else periods.pop()
        assert not periods, name
        assert period in (60, 300), name
        assert 1 <= p["DatapointsToAlarm"] <= p["EvaluationPeriods"] <= 15, name
        # Long enough to ignore one blip, short enough to wake someone within 15 minutes.
        assert period * p["EvaluationPeriods"] <= 900, name
        assert p["TreatMissingData"] in ("breaching", "notBreaching"), name
        assert len(p["AlarmDescription"]) > 40, f"{name} does not say what to look at"


def test_an_absent_metric_counts_as_down_only_where_absence_means_down(template):
    missing = {n: a["Properties"]["TreatMissingData"] for n, a in _alarms(template).items()}
    breaching = {n for n, v in missing.items() if v == "breaching"}
    assert breaching == {"WebNoHealthyTargetAlarm", "StreamingNoHealthyTargetAlarm", "WorkerDownAlarm",
                         "SidekiqNoProcessAlarm"}


def test_database_thresholds_follow_the_chosen_instance_class(template):
    for name, key in (("DatabaseConnectionsAlarm", "Connections"),
                      ("DatabaseMemoryAlarm", "FreeableMemoryBytes")):
        assert props(template, name)["Threshold"] == {
            "Fn::FindInMap": ["DatabaseAlarmThresholds", {"Ref": "DatabaseInstanceClass"}, key]}
    mapping = template["Mappings"]["DatabaseAlarmThresholds"]
    assert set(mapping) == {d.name for d in capacity.DATABASE_CLASSES}
    for database in capacity.DATABASE_CLASSES:
        connections = int(mapping[database.name]["Connections"])
        # Near max_connections: warns before refusals, not at ordinary load.
        assert 0.7 * database.max_connections <= connections < database.max_connections - \
            capacity.RESERVED_CONNECTIONS, database.name
        memory = int(mapping[database.name]["FreeableMemoryBytes"])
        assert 0.05 <= memory / (database.memory_mib * 1024 * 1024) <= 0.2, database.name


def test_the_worker_group_publishes_the_metric_its_alarm_reads(template):
    (collection,) = props(template, "WorkerAutoScalingGroup")["MetricsCollection"]
    assert collection["Granularity"] == "1Minute"
    assert "GroupInServiceInstances" in collection["Metrics"]


def _dashboard_alarm_arns(template):
    body = json.loads(props(template, "Dashboard")["DashboardBody"]["Fn::Sub"])
    status = [w for w in body["widgets"] if w["type"] == "alarm"]
    graphs = [w for w in body["widgets"] if w["type"] == "metric"]
    return ({arn for w in status for arn in w["properties"]["alarms"]},
            [arn for w in graphs for arn in w["properties"]["annotations"]["alarms"]])


def test_the_dashboard_shows_every_alarm_state_and_graph(template):
    # An option's alarms (with a Condition) may not exist: the body cannot name them.
    expected = {f"${{{name}.Arn}}" for name, alarm in _alarms(template).items() if "Condition" not in alarm}
    status, graphs = _dashboard_alarm_arns(template)
    assert status == expected
    assert sorted(graphs) == sorted(expected)


def test_alarms_reference_only_resources_that_exist(template):
    for name, alarm in _alarms(template).items():
        missing = {r for r in refs(alarm) if not r.startswith("AWS::")} - set(template["Resources"]) \
            - set(template["Parameters"])
        assert not missing, f"{name} refers to {missing}"


# ---------------------------------------------------------------- a failed rollout
# AWS's example of the event (Step Functions developer guide, "Step Functions event
# examples", Execution Failed); Timed Out and Aborted differ only in the status.
STATE_MACHINE_ARN = "arn:aws:states:us-east-1:012345678912:stateMachine:state-machine"
EXECUTION_FAILED = {
    "version": "0",
    "id": "315c1398-40ff-a850-213b-158f73e60175",
    "detail-type": "Step Functions Execution Status Change",
    "source": "aws.states",
    "account": "012345678912",
    "time": "2019-02-26T19:42:21Z",
    "region": "us-east-1",
    "resources": ["arn:aws:states:us-east-1:012345678912:execution:state-machine-name:execution-name"],
    "detail": {
        "executionArn": "arn:aws:states:us-east-1:012345678912:execution:state-machine-name:execution-name",
        "stateMachineArn": STATE_MACHINE_ARN,
        "name": "execution-name",
        "status": "FAILED",
        "startDate": 1551225146847,
        "stopDate": 1551225151881,
        "input": "{}",
        "output": None,
    },
}


def _event(status="FAILED", machine=STATE_MACHINE_ARN):
    return {**EXECUTION_FAILED, "detail": {**EXECUTION_FAILED["detail"], "status": status,
                                           "stateMachineArn": machine}}


def _rollout_rules(template):
    return {name: rule["Properties"] for name, rule in resources(template, "AWS::Events::Rule").items()
            if rule["Properties"].get("EventPattern", {}).get("source") == ["aws.states"]}


def _rollout_rule(template):
    (rule,) = _rollout_rules(template).values()
    return rule


def _matches(pattern, event):
    """EventBridge's matching for exact values: every field named, with one of the values listed."""
    for key, wanted in pattern.items():
        if key not in event:
            return False
        if isinstance(wanted, dict):
            if not isinstance(event[key], dict) or not _matches(wanted, event[key]):
                return False
        elif event[key] not in wanted:
            return False
    return True


def _pattern_for_machine(template):
    """The rule's pattern with the state machine's Ref standing for AWS's example ARN."""
    (machine,) = resources(template, "AWS::StepFunctions::StateMachine")
    pattern = json.loads(json.dumps(_rollout_rule(template)["EventPattern"]))
    assert pattern["detail"]["stateMachineArn"] == [{"Ref": machine}]
    pattern["detail"]["stateMachineArn"] = [STATE_MACHINE_ARN]
    return pattern


def _path(event, path):
    """A JSON path of the form EventBridge's InputPathsMap takes ($.a.b)."""
    assert path.startswith("$.")
    node = event
    for key in path[2:].split("."):
        node = node[key]
    return node


QUEUE_GROUP_NAME = "mastodon-QueueWorkerAutoScalingGroup-X1"


def _mail(template, event, queue_workers=False):
    """The mail EventBridge makes of the event: the template, its fields filled in, line by line
    (the queue workers' option on or off)."""
    transformer = _rollout_rule(template)["Targets"][0]["InputTransformer"]
    text, variables = transformer["InputTemplate"]["Fn::Sub"]
    variables = dict(variables)
    values = {"${AWS::StackName}": "mastodon", "${AWS::Region}": "us-east-1",
              "${Domain}": "social.example.com"}
    assert variables.pop("Domain") == {"Ref": "DomainName"}
    condition, on, off = variables.pop("QueueHold")["Fn::If"]
    assert condition == "HasQueueWorkers" and off == ""
    hold, names = on["Fn::Sub"]
    assert names == {"Group": {"Ref": "QueueWorkerAutoScalingGroup"}} and not variables
    hold = hold.replace("${Group}", QUEUE_GROUP_NAME)
    values = {"${QueueHold}": hold if queue_workers else "", **values}  # its own ${AWS::Region} too
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    assert "${" not in text
    for name, path in transformer["InputPathsMap"].items():
        text = text.replace(f"<{name}>", _path(event, path))
    assert not re.search(r"<[\w.-]+>", text), "a placeholder has no field in InputPathsMap"
    # A quoted string per line: what EventBridge accepts as a text template.
    return [json.loads(line) for line in text.split("\n")]


def test_no_alarm_watches_the_rollout_any_more(template):
    # The metric-math alarm over three Step Functions metrics cost $0.30 a month; the rule is free.
    assert "RolloutFailedAlarm" not in template["Resources"]
    for name, alarm in _alarms(template).items():
        assert "AWS/States" not in json.dumps(alarm), name


@pytest.mark.parametrize("status", ["FAILED", "TIMED_OUT", "ABORTED"])
def test_a_rollout_that_ends_failed_timed_out_or_aborted_mails_the_alert_topic(template, status):
    rule = _rollout_rule(template)
    assert rule.get("State", "ENABLED") == "ENABLED"
    assert _matches(_pattern_for_machine(template), _event(status))
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Ref": "AlertTopic"}
    # SNS targets publish under the topic's policy; a role there can break KMS-encrypted delivery.
    assert "RoleArn" not in target


@pytest.mark.parametrize("status", ["RUNNING", "SUCCEEDED", "PENDING_REDRIVE"])
def test_a_running_or_successful_rollout_mails_nothing_from_the_rule(template, status):
    assert not _matches(_pattern_for_machine(template), _event(status))


def test_only_this_stacks_rollouts_are_watched(template):
    other = "arn:aws:states:us-east-1:012345678912:stateMachine:someone-elses"
    assert not _matches(_pattern_for_machine(template), _event(machine=other))
    assert not _matches(_pattern_for_machine(template), {**_event(), "source": "aws.ssm"})


def test_every_field_of_the_mail_is_in_aws_example_event(template):
    transformer = _rollout_rule(template)["Targets"][0]["InputTransformer"]
    for name, path in transformer["InputPathsMap"].items():
        assert isinstance(_path(EXECUTION_FAILED, path), str), f"{name}: {path} is not in AWS's example"


def test_the_mail_names_the_execution_and_says_what_to_do(template):
    mail = "\n".join(_mail(template, _event("TIMED_OUT")))
    detail = EXECUTION_FAILED["detail"]
    assert "social.example.com" in mail and "mastodon" in mail
    assert "TIMED_OUT" in mail
    assert f"Execution: {detail['name']}" in mail
    assert f"--execution-arn {detail['executionArn']}" in mail
    assert "previous version keeps serving" in mail
    assert "execution's history" in mail
    # The quotes of each line show in the mail: no empty lines, no quotes inside.
    assert all(line and '"' not in line for line in mail.split("\n"))


def test_with_queue_workers_the_mail_names_their_groups_held_scaling_and_how_to_resume_it(template):
    # The rollout holds the queue workers' group's scaling too (fleet.held_groups): a rollout
    # that was stopped or timed out may leave it suspended, and the mail must say so.
    command = (
        f"aws autoscaling resume-processes --region us-east-1 --auto-scaling-group-name {QUEUE_GROUP_NAME}"
    )
    with_queue = "\n".join(_mail(template, _event("ABORTED"), queue_workers=True))
    assert "queue workers' group" in with_queue and command in with_queue
    assert "web group's scaling processes still suspended" in with_queue
    assert all(line and '"' not in line for line in with_queue.split("\n"))
    without = "\n".join(_mail(template, _event("ABORTED")))
    assert "queue workers" not in without and "resume-processes" not in without
    assert "web group's scaling processes still suspended." in without


# ---------------------------------------------------------------- the alert topic's policy
def _topic_policy(template):
    (policy,) = resources(template, "AWS::SNS::TopicPolicy").values()
    assert policy["Properties"]["Topics"] == [{"Ref": "AlertTopic"}]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    for statement in statements:
        assert statement["Resource"] == [{"Ref": "AlertTopic"}], statement["Sid"]
    return statements


def _by_service(template, service):
    found = [s for s in _topic_policy(template) if s.get("Principal") == {"Service": service}]
    assert len(found) == 1, f"{service}: {len(found)} statements"
    return found[0]


def test_this_accounts_alarms_may_publish_to_the_topic(template):
    statement = _by_service(template, "cloudwatch.amazonaws.com")
    assert (statement["Effect"], statement["Action"]) == ("Allow", ["sns:Publish"])
    condition = statement["Condition"]
    assert condition["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert condition["ArnLike"] == {"aws:SourceArn": {
        "Fn::Sub": "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:*"}}


def test_every_rule_that_targets_the_topic_and_only_those_may_publish(template):
    statement = _by_service(template, "events.amazonaws.com")
    assert (statement["Effect"], statement["Action"]) == ("Allow", ["sns:Publish"])
    (condition,) = statement["Condition"].items()
    assert condition[0] == "ArnEquals"
    allowed = condition[1]["aws:SourceArn"]
    rules = resources(template, "AWS::Events::Rule")
    targeting = [{"Fn::GetAtt": [name, "Arn"]} for name, rule in rules.items()
                 if any(t["Arn"] == {"Ref": "AlertTopic"} for t in rule["Properties"]["Targets"])]
    assert targeting
    assert sorted(map(json.dumps, allowed)) == sorted(map(json.dumps, targeting))


def test_the_topic_admits_no_public_principal_and_no_plain_http(template):
    statements = _topic_policy(template)
    for statement in statements:
        if statement["Effect"] == "Allow":
            assert statement["Principal"] not in ("*", {"AWS": "*"}), statement["Sid"]
            assert "AWS" in statement["Principal"] or "Condition" in statement, statement["Sid"]
    (deny,) = [s for s in statements if s["Effect"] == "Deny"]
    assert deny["Principal"] == "*" and deny["Action"] == ["sns:Publish"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    account_root = {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
    for statement in statements:
        if isinstance(statement["Principal"], dict) and "AWS" in statement["Principal"]:
            assert statement["Principal"] == {"AWS": account_root}, statement["Sid"]


def test_every_service_the_topic_admits_may_also_use_its_key(template):
    # Publishing to an encrypted topic needs both: the topic's permission and the key's.
    services = {s["Principal"]["Service"] for s in _topic_policy(template)
                if isinstance(s.get("Principal"), dict) and "Service" in s["Principal"]}
    assert services == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}
    key_statements = props(template, "OperationsKey")["KeyPolicy"]["Statement"]
    (publishers,) = [s for s in key_statements if set(s["Principal"].get("Service", [])) == services]
    assert {"kms:Decrypt", "kms:GenerateDataKey"} <= set(publishers["Action"])
    # EventBridge's KMS requests carry no aws:SourceArn: a condition would drop its notices.
    assert "Condition" not in publishers


def _groups_behind(template, alarm):
    """The Auto Scaling groups whose servers make the alarm's metric."""
    dimensions = {d["Name"]: d["Value"] for d in alarm["Properties"]["Dimensions"]}
    groups = set(resources(template, "AWS::AutoScaling::AutoScalingGroup"))
    if alarm["Properties"]["Namespace"] == {"Fn::Sub": "Mastodon/${AWS::StackName}"}:
        return {"WorkerAutoScalingGroup"}  # the main worker publishes the queue metrics
    if "AutoScalingGroupName" in dimensions:
        return {dimensions["AutoScalingGroupName"]["Ref"]}
    target_group = dimensions["TargetGroup"]["Fn::GetAtt"][0]
    return {g for g in groups if {"Ref": target_group} in props(template, g).get("TargetGroupARNs", [])}


def test_an_alarm_that_counts_a_missing_metric_as_down_waits_for_the_servers_it_watches(template):
    # Created before its group has signalled, such an alarm would find no data (or no
    # healthy target) while the first servers legitimately boot, and mail an outage.
    for name, alarm in _alarms(template).items():
        if alarm["Properties"]["TreatMissingData"] != "breaching":
            continue
        groups = _groups_behind(template, alarm)
        assert groups, name
        after = set(alarm.get("DependsOn", [])) | refs(alarm["Properties"])
        assert groups <= after, f"{name} may be created before {groups - after} has signalled"


def test_no_healthy_target_means_none_in_the_whole_minute(template):
    # A rollout's surge, or a replacement, keeps a healthy target in every minute.
    for kind in ("Web", "Streaming"):
        assert props(template, f"{kind}NoHealthyTargetAlarm")["Statistic"] == "Maximum"


def test_a_booting_web_server_is_no_target_so_the_unhealthy_target_alarms_stay_quiet(template):
    # Auto Scaling registers a server behind a target group as soon as it launches,
    # unless a launch hook holds it: without one, a boot (pulls, database wait) longer
    # than the alarm's window reads as an unhealthy target during creation, scale-out
    # and every rollout's surge. The hook is held for bootstrap's own worst case up to
    # local health, and a server that never says it serves is abandoned, not let in.
    from templates import compute, load_balancing
    from tests.instance.test_instance_keep_alive import stack_env_value

    (hook,) = props(template, compute.WEB_GROUP)["LifecycleHookSpecificationList"]
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert hook["DefaultResult"] == "ABANDON"
    assert hook["LifecycleHookName"] == stack_env_value(template, compute.WEB_LAUNCH_TEMPLATE, "LAUNCH_HOOK")
    waits = sum(int(stack_env_value(template, compute.WEB_LAUNCH_TEMPLATE, key))
                for key in ("BOOT_DATABASE_WAIT_SECONDS", "BOOT_HEALTH_WAIT_SECONDS"))
    assert waits < hook["HeartbeatTimeout"] <= 7200  # Auto Scaling's maximum
    # Once let in, a server that serves turns healthy well within the alarm's window.
    for kind in ("Web", "Streaming"):
        alarm = props(template, f"{kind}UnhealthyTargetsAlarm")
        target_group = props(template, f"{kind}TargetGroup")
        to_healthy = target_group["HealthyThresholdCount"] * (
            target_group["HealthCheckIntervalSeconds"] + target_group["HealthCheckTimeoutSeconds"])
        assert 2 * to_healthy < alarm["Period"] * alarm["DatapointsToAlarm"]
        assert target_group["HealthCheckIntervalSeconds"] == load_balancing.HEALTH_CHECK_INTERVAL_SECONDS
    # The worker is in no target group, and its in-service count is the worker-down
    # alarm's metric: a hook would make every boot of the worker read as an outage.
    assert "LifecycleHookSpecificationList" not in props(template, compute.WORKER_GROUP)
    assert "TargetGroupARNs" not in props(template, compute.WORKER_GROUP)
