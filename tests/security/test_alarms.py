"""Alarms catch what breaks a Mastodon instance and reach the admin; the dashboard shows them."""

from __future__ import annotations

import json

import pytest
from troposphere import Template, sns, stepfunctions

from templates import alarms, capacity
from tests.support import props, refs, resources


def _alarms(template):
    return resources(template, "AWS::CloudWatch::Alarm")


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
        # A metric-math alarm (the rollout's) sets the period on each metric it reads.
        periods = {q["MetricStat"]["Period"] for q in p.get("Metrics", []) if "MetricStat" in q}
        (period,) = periods or {p["Period"]}
        assert period in (60, 300), name
        assert 1 <= p["DatapointsToAlarm"] <= p["EvaluationPeriods"] <= 15, name
        # Long enough to ignore one blip, short enough to wake someone within 15 minutes.
        assert period * p["EvaluationPeriods"] <= 900, name
        assert p["TreatMissingData"] in ("breaching", "notBreaching"), name
        assert len(p["AlarmDescription"]) > 40, f"{name} does not say what to look at"


def test_an_absent_metric_counts_as_down_only_where_absence_means_down(template):
    missing = {n: a["Properties"]["TreatMissingData"] for n, a in _alarms(template).items()}
    breaching = {n for n, v in missing.items() if v == "breaching"}
    assert breaching == {"WebNoHealthyTargetAlarm", "StreamingNoHealthyTargetAlarm", "WorkerDownAlarm"}


def test_fixed_thresholds_are_the_documented_ones(template):
    def threshold(name):
        return props(template, name)["Threshold"]

    assert threshold("DatabaseCpuAlarm") == 80
    assert threshold("DatabaseStorageAlarm") == 1024 ** 3
    assert threshold("CacheMemoryAlarm") == 80
    assert threshold("CacheEvictionsAlarm") == 0
    assert threshold("WebNoHealthyTargetAlarm") == threshold("WorkerDownAlarm") == 1
    assert threshold("LoadBalancer5xxAlarm") == threshold("Target5xxAlarm") == 10


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
    expected = {f"${{{name}.Arn}}" for name in _alarms(template)}
    status, graphs = _dashboard_alarm_arns(template)
    assert status == expected
    assert sorted(graphs) == sorted(expected)


def _rollout_template():
    t = Template()
    topic = t.add_resource(sns.Topic("AlertTopic"))
    machine = t.add_resource(stepfunctions.StateMachine(
        "RolloutStateMachine", RoleArn="arn:aws:iam::123456789012:role/x", DefinitionString="{}"))
    alarm = alarms.create_rollout_failure_alarm(t, machine, topic)
    alarms.create_dashboard(t)
    return json.loads(t.to_json()), alarm.title


def test_a_failed_timed_out_or_aborted_rollout_raises_an_alarm():
    template, name = _rollout_template()
    alarm = props(template, name)
    assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}]
    metrics = {q["Id"]: q for q in alarm["Metrics"]}
    watched = {q["MetricStat"]["Metric"]["MetricName"] for q in metrics.values() if "MetricStat" in q}
    assert watched == {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"}
    for query in metrics.values():
        if "MetricStat" in query:
            assert query["MetricStat"]["Metric"]["Dimensions"] == [
                {"Name": "StateMachineArn", "Value": {"Ref": "RolloutStateMachine"}}]
    (returned,) = [q for q in metrics.values() if q.get("ReturnData", True)]
    assert all(f"FILL({i}, 0)" in returned["Expression"] for i in ("failed", "timedout", "aborted"))
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    assert _dashboard_alarm_arns(template)[0] == {f"${{{name}.Arn}}"}


def test_the_rollout_alarm_passes_cfn_lint():
    from cfnlint.api import ManualArgs, lint

    template, _ = _rollout_template()
    template["Resources"]["RolloutStateMachine"]["Properties"]["DefinitionString"] = json.dumps(
        {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})
    assert [str(m) for m in lint(json.dumps(template), config=ManualArgs(regions=["us-east-1"]))] == []


def test_alarms_reference_only_resources_that_exist(template):
    for name, alarm in _alarms(template).items():
        missing = {r for r in refs(alarm) if not r.startswith("AWS::")} - set(template["Resources"]) \
            - set(template["Parameters"])
        assert not missing, f"{name} refers to {missing}"


def test_the_stacks_rollout_is_watched_for_failure(template):
    (machine,) = resources(template, "AWS::StepFunctions::StateMachine")
    alarm = props(template, "RolloutFailedAlarm")
    dimensions = [q["MetricStat"]["Metric"]["Dimensions"] for q in alarm["Metrics"] if "MetricStat" in q]
    expected = [{"Name": "StateMachineArn", "Value": {"Ref": machine}}]
    assert dimensions and all(d == expected for d in dimensions)
