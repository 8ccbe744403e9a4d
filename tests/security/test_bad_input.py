"""Bad input is refused with a clear message: every parameter at its edges, the rules
across parameters, and build.py's options.

CloudFormation checks a value against Type, AllowedPattern (the whole value),
AllowedValues (each member of a CommaDelimitedList) and MinValue/MaxValue before it
creates anything; `accepts` applies
the same checks to the built template's definitions, so removing or loosening a
constraint fails a case here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from templates import capacity

ROOT = Path(__file__).resolve().parent.parent.parent
ARN_UUID = "12345678-1234-1234-1234-123456789012"
CERTIFICATE = f"arn:aws:acm:us-east-1:123456789012:certificate/{ARN_UUID}"
WEB_ACL = f"arn:aws:wafv2:us-east-1:123456789012:global/webacl/mastodon/{ARN_UUID}"


def accepts(parameter: dict[str, Any], value: str) -> bool:
    if parameter["Type"] == "Number":
        try:
            number = float(value)
        except ValueError:
            return False
        if "MinValue" in parameter and number < float(parameter["MinValue"]):
            return False
        if "MaxValue" in parameter and number > float(parameter["MaxValue"]):
            return False
    members = value.split(",") if parameter["Type"] == "CommaDelimitedList" else [value]
    if "AllowedValues" in parameter and not set(members) <= {str(v) for v in parameter["AllowedValues"]}:
        return False
    if "AllowedPattern" in parameter and not re.fullmatch(parameter["AllowedPattern"], value):
        return False
    return True


def _label(n: int) -> str:
    return "a" * n


def _sizes(low: int, high: int) -> tuple[list[str], list[str]]:
    return [str(low), str(high)], [str(low - 1), str(high + 1), "", "two"]


def _listed_sizes(low: int, high: int) -> tuple[list[str], list[str]]:
    # Text the size rules compare: a number spelled another way must not slip past them.
    inside, outside = _sizes(low, high)
    return inside, [*outside, f"0{high}", f"{low}.0", f" {low}"]


def _choices(values: list[str], near_misses: list[str]) -> tuple[list[str], list[str]]:
    return values, [*near_misses, ""]


LONGEST_DOMAIN = ".".join([_label(62)] * 3 + [_label(61)]) + ".io"  # 253 characters, DNS's limit
assert len(LONGEST_DOMAIN) == 253

# parameter: (values just inside, values just outside)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "DomainName": (
        ["a.io", "social.example.com", f"{_label(63)}.example.com", LONGEST_DOMAIN],
        ["a.b", "Social.example.com", f"{_label(64)}.example.com", "a" + LONGEST_DOMAIN,
         "social.example.com.", "-x.example.com", "social.example.com/", "https://social.example.com", ""]),
    "AlertEmail": (["a@b.io", "ops+alerts@social.example.com"],
                   ["a@b", "a b@example.com", "@example.com", "a@Example.com", ""]),
    "HostedZoneId": (["", "Z1", "Z" + "A" * 31], ["Z", "Z" + "A" * 32, "z0123", "/hostedzone/Z0123"]),
    "CloudFrontCertificateArn": (["", CERTIFICATE], [CERTIFICATE[:-1], CERTIFICATE + "0", "arn:aws:acm"]),
    "LoadBalancerCertificateArn": (["", CERTIFICATE.replace("us-east-1", "eu-central-1")],
                                   [CERTIFICATE.replace("123456789012", "12345678901"), "certificate"]),
    "MailFromAddress": (["", "notifications@social.example.com"], ["notifications", " @x.io"]),
    "SmtpServer": (["", "smtp.mailgun.org"], ["smtp.mailgun.org:587", "SMTP.example.com", "localhost"]),
    "SmtpPort": _choices(["25", "465", "587", "2525"], ["24", "588", "80"]),
    "SmtpLogin": (["", "x" * 128, "postmaster@mg.example.com"], ["x" * 129, "has space", "tab\there"]),
    "SmtpPasswordSecretArn": (
        ["", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:smtp-AbC123"],
        ["hunter2", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:", "arn:aws:ssm:eu-west-1:1:x"]),
    "WebInstanceType": _choices([i.name for i in capacity.WEB_INSTANCE_TYPES],
                                ["t4g.micro", "t3.micro", "t4g.nano", "T4G.SMALL"]),
    "WorkerInstanceType": _choices([i.name for i in capacity.WORKER_INSTANCE_TYPES],
                                   ["t4g.nano", "t3.nano", "T4G.MICRO"]),
    "WebMinSize": _listed_sizes(capacity.WEB_MIN_SIZE_LIMIT, capacity.WEB_MAX_SIZE_LIMIT),
    "WebMaxSize": _listed_sizes(capacity.WEB_MIN_SIZE_LIMIT, capacity.WEB_MAX_SIZE_LIMIT),
    "DatabaseInstanceClass": _choices([d.name for d in capacity.DATABASE_CLASSES],
                                      ["db.t3.micro", "db.t4g.nano", "t4g.micro"]),
    "DatabaseAllocatedStorage": _sizes(20, 16384),
    "DatabaseMaxAllocatedStorage": _sizes(22, 65536),
    "DatabaseMultiAZ": _choices(["true", "false"], ["True", "yes", "1"]),
    "UseSpotInstances": _choices(["true", "false"], ["TRUE", "spot", ""]),
    "DatabaseBackupRetentionDays": _sizes(1, 35),
    "DatabaseDeletionProtection": _choices(["true", "false"], ["TRUE", "no", "0"]),
    "CacheNodeType": _choices(["cache.t4g.micro", "cache.m7g.large"], ["cache.t4g.nano", "cache.t3.micro"]),
    "LogRetentionDays": _choices(["7", "14", "30", "60", "90", "180", "365"], ["1", "31", "400", "3653"]),
    "LoadBalancerScheme": _choices(["auto", "internet-facing"], ["internal", "Auto", "public", ""]),
    "WafEnabled": _choices(["true", "false"], ["on", "True"]),
    "WafWebAclArn": (["", WEB_ACL], [WEB_ACL.replace("us-east-1", "eu-central-1"),
                                     WEB_ACL.replace("global", "regional"), WEB_ACL + "x"]),
    "WafRateLimit": _sizes(100, 2000000000),
    "RollingBatchSize": _sizes(1, 5),
    "QueueWorkerMinSize": _listed_sizes(0, capacity.QUEUE_WORKER_MAX_SIZE_LIMIT),
    "QueueWorkerMaxSize": _listed_sizes(0, capacity.QUEUE_WORKER_MAX_SIZE_LIMIT),
    "QueueWorkerInstanceType": _choices([i.name for i in capacity.WORKER_INSTANCE_TYPES],
                                        ["t4g.nano", "T4G.SMALL", "m7g.4xlarge"]),
    "MainWorkerQueues": (["all", "scheduler", "default,push,ingress,mailers,pull,scheduler,fasp",
                          "scheduler,mailers"],
                         ["", "All", "default,low", "scheduler,", "scheduler, mailers", "sidekiq"]),
    # An unknown queue name and the scheduler are refused on the queue workers.
    "QueueWorkerQueues": (["default", "default,push,ingress,pull,mailers,fasp", "fasp,pull"],
                          ["", "all", "scheduler", "default,scheduler", "default,low", "Default",
                           "default;push"]),
    "DatabasePooler": _choices(["true", "false"], ["True", "pgbouncer", ""]),
    # Empty is "no replica".
    "DatabaseReplicaClass": (["", *(d.name for d in capacity.DATABASE_CLASSES)],
                             ["db.t3.micro", "none", "r7g.large", " "]),
    "SeparateCacheNodeType": (["", "cache.t4g.micro", "cache.m7g.large"],
                              ["cache.t4g.nano", "cache.t3.micro", "t4g.micro", "none", "true"]),
    "CacheReplica": (["none", "standby", "failover"], ["true", "false", "Failover", "replica", ""]),
    "SearchEnabled": _choices(["true", "false"], ["on", "True"]),
    "SearchInstanceType": _choices(["t3.small.search", "r7g.xlarge.search"],
                                   ["t3.small", "t2.micro.search", "t3.small.elasticsearch"]),
    # Zone awareness over two zones needs an even count; one node stays in one zone.
    "SearchInstanceCount": _choices(["1", "2", "4", "6"], ["0", "3", "5", "8"]),
    "SearchVolumeSize": _choices(["10", "1000"], ["9", "15", "1001"]),
    "SearchCreateServiceLinkedRole": _choices(["true", "false"], ["yes", "False"]),
    "MastodonSettings": _choices(["true", "false"], ["True", "yes", ""]),
    "MastodonSettingsSecretArn": (
        ["", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mastodon-settings-AbC123"],
        ["mastodon-settings", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:",
         "arn:aws:ssm:eu-west-1:123456789012:parameter/mastodon/x/settings"]),
    # Your own images: a repository of a public registry or of ECR, lowercase, no tag.
    **{name: (
        ["ghcr.io/mastodon/mastodon-streaming", "docker.io/glitchsoc/mastodon", "quay.io/a/b_c",
         "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/mastodon",
         "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/m", "ghcr.io/" + "a" * 247],
        ["", "ghcr.io", "ghcr.io/Mastodon/mastodon", "ghcr.io/mastodon/mastodon:v4.7.6",
         "ghcr.io/mastodon/mastodon@sha256:0f3c", "gcr.io/a/b", "https://ghcr.io/a/b", "ghcr.io/a//b",
         "ghcr.io/a/b;reboot", "ghcr.io/a/-b", "12345.dkr.ecr.eu-west-1.amazonaws.com/m",
         "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "ghcr.io/" + "a" * 248, "ghcr.io/a/b\n"])
       for name in ("WebImageRepository", "StreamingImageRepository")},
    "InitialMastodonVersion": (
        ["", "v4.7.6", "v4.7.6-glitch", "2026-12-01", "3f9c2e1", "x" * 128],
        ["v4.7.6+glitch", "-rc1", ".x", "v4 7", "v4.7.6;reboot", "x" * 129, "v4.7.6\n"]),
    "UpgradeOnImagePush": (["false", "true"], ["yes", ""]),
    "RollRepushedTags": (["false", "true"], ["True", ""]),
    "ImagePushTagPattern": (
        [r"v[0-9]+\.[0-9]+\.[0-9]+(-[A-Za-z0-9_.-]+)?", "main-[0-9a-f]{7,40}", "x" * 100],
        ["(a+)+", "v[0-9", "^v1$", ".*;rm", "x" * 101, ""]),
}


def test_every_parameter_has_edge_cases(template):
    assert set(CASES) == set(template["Parameters"]), "add the new parameter's edge cases to CASES"


EDGE_CASES = [(name, value, True) for name, (good, _) in CASES.items() for value in good] + \
             [(name, value, False) for name, (_, bad) in CASES.items() for value in bad]


@pytest.mark.parametrize(("name", "value", "accepted"), EDGE_CASES,
                         ids=[f"{n}={v[:30]!r}" for n, v, _ in EDGE_CASES])
def test_each_parameter_accepts_values_just_inside_and_rejects_those_just_outside(
        template, name, value, accepted):
    if name not in template["Parameters"]:
        pytest.fail(f"{name} is gone from the template: remove its cases")
    assert accepts(template["Parameters"][name], value) is accepted


def test_a_rejected_pattern_says_what_was_expected(template):
    for name, parameter in template["Parameters"].items():
        if "AllowedPattern" in parameter:
            assert len(parameter.get("ConstraintDescription", "")) >= 10, name


# --- Rules: combinations no single constraint can refuse -----------------------------

def evaluate(node: Any, values: dict[str, str]) -> Any:
    """The rule functions CloudFormation offers, over given parameter values."""
    if isinstance(node, dict):
        (function, argument), = node.items()
        if function == "Ref":
            return values[argument]
        arguments = [evaluate(a, values) for a in argument]
        return {
            "Fn::Equals": lambda: arguments[0] == arguments[1],
            "Fn::Not": lambda: not arguments[0],
            "Fn::And": lambda: all(arguments),
            "Fn::Or": lambda: any(arguments),
            "Fn::Contains": lambda: arguments[1] in arguments[0],
            "Fn::EachMemberEquals": lambda: all(m == arguments[1] for m in arguments[0]),
        }[function]()
    if isinstance(node, list):
        return [evaluate(v, values) for v in node]
    return node


def refusals(template: dict[str, Any], values: dict[str, str], region: str = "us-east-1") -> list[str]:
    given: dict[str, Any] = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    given |= {"AWS::Region": region, **values}
    # A CommaDelimitedList is a list of strings to the rule functions.
    given |= {name: given[name].split(",") for name, p in template["Parameters"].items()
              if p["Type"] == "CommaDelimitedList"}
    found = []
    for name, rule in template["Rules"].items():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], given):
            continue
        found += [f"{name}: {a['AssertDescription']}" for a in rule["Assertions"]
                  if not evaluate(a["Assert"], given)]
    return found


ZONE = {"HostedZoneId": "Z0123456789ABCDEFGHIJ", "DomainName": "social.example.com",
        "AlertEmail": "admin@example.com"}
RULE_CASES = [
    ("defaults with a hosted zone", {}, "us-east-1", None),
    ("web minimum equals maximum", {"WebMinSize": "10", "WebMaxSize": "10"}, "us-east-1", None),
    ("web minimum one above maximum", {"WebMinSize": "3", "WebMaxSize": "2"}, "us-east-1", "WebMinSize"),
    ("web minimum ten, maximum nine", {"WebMinSize": "10", "WebMaxSize": "9"}, "us-east-1", "WebMinSize"),
    ("web minimum two, maximum one", {"WebMinSize": "2", "WebMaxSize": "1"}, "us-east-1", "WebMinSize"),
    ("WAF created in us-east-1", {"WafEnabled": "true"}, "us-east-1", None),
    ("WAF created elsewhere", {"WafEnabled": "true"}, "eu-central-1", "WafWebAclArn"),
    ("WAF created and attached", {"WafEnabled": "true", "WafWebAclArn": WEB_ACL}, "us-east-1", "not both"),
    ("existing WAF attached elsewhere", {"WafWebAclArn": WEB_ACL}, "eu-central-1", None),
    ("no zone, no certificates", {"HostedZoneId": ""}, "us-east-1", "certificate ARNs"),
    ("no zone, both certificates", {"HostedZoneId": "", "CloudFrontCertificateArn": CERTIFICATE,
                                    "LoadBalancerCertificateArn": CERTIFICATE}, "us-east-1", None),
    ("external SMTP without login", {"SmtpServer": "smtp.example.net"}, "us-east-1", "SmtpLogin"),
    # Sidekiq queue workers.
    ("queue workers on, default split", {"QueueWorkerMaxSize": "3"}, "us-east-1", None),
    ("queue workers, minimum equals maximum", {"QueueWorkerMinSize": "10", "QueueWorkerMaxSize": "10",
                                               "DatabaseInstanceClass": "db.t4g.small"}, "us-east-1", None),
    ("queue workers, minimum above maximum", {"QueueWorkerMinSize": "2", "QueueWorkerMaxSize": "1"},
     "us-east-1", "QueueWorkerMinSize must not exceed"),
    ("queue workers, minimum without maximum", {"QueueWorkerMinSize": "1"}, "us-east-1",
     "QueueWorkerMinSize must not exceed"),
    ("main worker split, everything still runs",
     {"QueueWorkerMaxSize": "2", "MainWorkerQueues": "scheduler,mailers"}, "us-east-1", None),
    ("main worker without the scheduler", {"QueueWorkerMaxSize": "2", "MainWorkerQueues": "mailers"},
     "us-east-1", "includes scheduler"),
    ("main worker all and more", {"MainWorkerQueues": "all,scheduler"}, "us-east-1", "all alone"),
    ("a queue nobody runs", {"QueueWorkerMaxSize": "2", "MainWorkerQueues": "scheduler,mailers",
                             "QueueWorkerQueues": "default,push,ingress,pull"}, "us-east-1", "fasp"),
    ("queues split without queue workers", {"MainWorkerQueues": "scheduler,mailers"}, "us-east-1",
     "Every queue must run somewhere"),
    ("too many servers for a micro database", {"WebMaxSize": "10", "QueueWorkerMaxSize": "3"}, "us-east-1",
     "at most 12"),
    ("the most servers a micro database holds", {"WebMaxSize": "10", "QueueWorkerMaxSize": "2"},
     "us-east-1", None),
    ("many servers on a larger database", {"WebMaxSize": "10", "QueueWorkerMaxSize": "10",
                                           "DatabaseInstanceClass": "db.t4g.small"}, "us-east-1", None),
    # Upgrade on push needs the web image in this account's ECR (upstream's cannot be).
    ("upgrade on push with upstream's images", {"UpgradeOnImagePush": "true"}, "us-east-1", "Amazon ECR"),
    ("upgrade on push with images in ECR",
     {"UpgradeOnImagePush": "true", "InitialMastodonVersion": "v4.7.6-glitch",
      "WebImageRepository": "123456789012.dkr.ecr.us-east-1.amazonaws.com/fork/mastodon"}, "us-east-1", None),
    # A new stack boots a version the repositories hold: named with images of one's own,
    ("images of one's own without a first version",
     {"WebImageRepository": "ghcr.io/glitch-soc/mastodon"}, "us-east-1", "InitialMastodonVersion must name"),
    # and the pinned release with upstream's.
    ("upstream's images with another first version",
     {"InitialMastodonVersion": "v4.8.0"}, "us-east-1", "leave InitialMastodonVersion empty"),
]


@pytest.mark.parametrize(("case", "values", "region", "message"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_rules_refuse_bad_combinations_with_a_message(template, case, values, region, message):
    found = refusals(template, {**ZONE, **values}, region)
    if message is None:
        assert found == []
    else:
        assert len(found) == 1 and message in found[0], found


# --- build.py --------------------------------------------------------------------------

def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "build.py"), *args], capture_output=True,
                          text=True, timeout=60, check=False)


BUILD_CASES = [
    ("unknown option", ["--mastodon-versoin", "v4.5.0"], "unrecognized arguments"),
    ("version without a value", ["--mastodon-version"], "expected one argument"),
    ("empty version", ["--mastodon-version", ""], "is not a Mastodon release tag"),
    ("version with a newline", ["--mastodon-version", "v4.5.0\nrm"], "is not a Mastodon release tag"),
    ("output dir without a value", ["--output-dir"], "expected one argument"),
]


@pytest.mark.parametrize(("case", "args", "message"), BUILD_CASES, ids=[c[0] for c in BUILD_CASES])
def test_build_refuses_bad_options_clearly_and_writes_nothing(tmp_path, case, args, message):
    output = [] if "--output-dir" in args else ["--output-dir", str(tmp_path / "dist")]
    result = run_build(*args, *output)
    assert result.returncode == 2
    assert message in result.stderr and "usage:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dist").exists()
