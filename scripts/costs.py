"""The monthly cost of a built template for one parameter set, before traffic.

Pure: takes the template (a dict), the parameter values and a price table (the
dict of pricing/<region>.json) and returns line items. Everything that bills by the
hour or the month is counted from the template's own resources, so a resource a
tier adds shows up here without a change: instances (per Auto Scaling group, at its
minimum size, on-demand or spot), their EBS volumes and public IPv4 addresses, load
balancers and their public addresses (none for an internal one), NAT gateways, RDS
instances and storage (Multi-AZ doubles both), ElastiCache nodes, OpenSearch nodes and
storage, Secrets Manager secrets, KMS keys, CloudWatch alarms (per metric watched), the
custom metrics the servers publish (counted in the metadata of the resource that lets
them), WAF web ACLs and rules,
the log ingestion of idle servers, and functions a schedule runs. Usage-priced services (CloudFront, S3,
Lambda, Step Functions, SNS, data transfer, LCUs) cost nothing before traffic and
are named in one zero line. Conditions on the region are judged in the price
table's region.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scripts.template_values import Evaluator, parameter_values
from templates.compute import CUSTOM_METRICS_METADATA

SPOT_PARAMETER = "UseSpotInstances"
USAGE_ONLY = "CloudFront, S3, Lambda, Step Functions, SNS, SSM, EventBridge, data transfer, ALB LCUs"


class PriceMissing(KeyError):
    """The price table has no price for something the parameters choose."""


@dataclass(frozen=True)
class LineItem:
    component: str
    detail: str
    monthly: float


@dataclass(frozen=True)
class Estimate:
    items: tuple[LineItem, ...]
    region: str
    as_of: str
    source: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    spot: bool = False  # the servers are priced as spot capacity

    @property
    def total(self) -> float:
        return round(sum(i.monthly for i in self.items), 2)

    def component(self, name: str) -> float:
        return round(sum(i.monthly for i in self.items if i.component == name), 2)

    def lines(self) -> list[str]:
        width = max(len(i.component) for i in self.items)
        out = [f"{i.component:<{width}}  {i.monthly:>8.2f}  {i.detail}" for i in self.items]
        basis = f"prices of {self.as_of}: servers on SPOT, the rest on-demand" if self.spot else \
            f"on-demand prices of {self.as_of}"
        out.append(f"{'total':<{width}}  {self.total:>8.2f}  USD/month in {self.region}, {basis}, "
                   "before traffic")
        return out + list(self.notes)


def _price(table: Mapping[str, Any], section: str, key: str) -> float:
    try:
        return float(table[section][key])
    except KeyError:
        raise PriceMissing(f"no {section} price for {key!r} in the price table") from None


class _Counter:
    def __init__(self, template: Mapping[str, Any], values: Mapping[str, str],
                 prices: Mapping[str, Any], spot: bool) -> None:
        self.template = template
        self.resources: dict[str, dict[str, Any]] = template["Resources"]
        self.ev = Evaluator(template, values)
        self.prices = prices
        self.hours = float(prices["hours_per_month"])
        self.spot = spot
        self.items: list[LineItem] = []
        self.servers = 0

    def add(self, component: str, detail: str, monthly: float) -> None:
        self.items.append(LineItem(component, detail, round(monthly, 2)))

    def of_type(self, resource_type: str) -> list[tuple[str, dict[str, Any]]]:
        return [(name, r) for name, r in self.resources.items()
                if r["Type"] == resource_type and self.ev.creates(name)]

    def launch_template_data(self, group: dict[str, Any]) -> dict[str, Any]:
        props = group.get("Properties", {})
        spec = props.get("LaunchTemplate") or props.get("MixedInstancesPolicy", {}).get(
            "LaunchTemplate", {}).get("LaunchTemplateSpecification", {})
        reference = spec.get("LaunchTemplateId", {})
        name = reference.get("Ref") if isinstance(reference, dict) else None
        if name not in self.resources:
            return {}
        data: dict[str, Any] = self.resources[name]["Properties"]["LaunchTemplateData"]
        return data

    def spot_count(self, group: dict[str, Any], count: int) -> int:
        """Instances of a group on spot: all with the what-if flag, else what its policy says."""
        if self.spot:
            return count
        distribution = group.get("Properties", {}).get("MixedInstancesPolicy", {}).get(
            "InstancesDistribution")
        if not distribution:
            return 0
        base = int(self.ev.number(distribution.get("OnDemandBaseCapacity", 0)))
        percent = self.ev.number(distribution.get("OnDemandPercentageAboveBaseCapacity", 100), 100)
        above = max(count - base, 0)
        return above - math.ceil(above * percent / 100)

    def servers_and_volumes(self) -> None:
        ipv4 = float(self.prices["public_ipv4_hourly"]) * self.hours
        for name, group in self.of_type("AWS::AutoScaling::AutoScalingGroup"):
            count = int(self.ev.number(group["Properties"].get("MinSize"), 0))
            if count == 0:
                continue
            self.servers += count
            data = self.launch_template_data(group)
            instance_type = str(self.ev.value(data.get("InstanceType")))
            label = (name.removesuffix("AutoScalingGroup").removesuffix("Group") or name).lower()
            hourly = _price(self.prices, "ec2_hourly", instance_type)
            spot = self.spot_count(group, count)
            on_demand = count - spot
            fraction = float(self.prices["spot_fraction"])
            market = (f"{on_demand} on-demand" if not spot else
                      f"{spot} spot at ~{fraction:.0%} of on-demand" if not on_demand else
                      f"{on_demand} on-demand + {spot} spot")
            self.add(f"{label} servers", f"{count} × {instance_type}, {market}",
                     hourly * self.hours * (on_demand + spot * fraction))
            for mapping in data.get("BlockDeviceMappings", []):
                ebs = mapping.get("Ebs", {})
                volume_type = str(self.ev.value(ebs.get("VolumeType", "gp3")))
                size = self.ev.number(ebs.get("VolumeSize"), 8)
                self.add(f"{label} EBS", f"{count} × {size:g} GiB {volume_type}",
                         count * size * _price(self.prices, "ebs_gb_month", volume_type))
            interfaces = data.get("NetworkInterfaces", [])
            if any(self.ev.flag(n.get("AssociatePublicIpAddress")) for n in interfaces):
                self.add("public IPv4", f"{count} {label} server(s)", count * ipv4)

    def load_balancers(self) -> None:
        ipv4 = float(self.prices["public_ipv4_hourly"]) * self.hours
        for name, lb in self.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer"):
            props = lb["Properties"]
            if props.get("Type", "application") == "application":
                self.add("load balancer", f"{name}: ALB hours (LCUs are traffic)",
                         float(self.prices["alb_hourly"]) * self.hours)
            if self.ev.value(props.get("Scheme", "internet-facing")) == "internet-facing":
                zones = len(self.ev.value(props.get("Subnets")) or props.get("SubnetMappings") or [])
                self.add("public IPv4", f"{zones} for {name} (one per zone)", zones * ipv4)
            else:
                self.add("public IPv4", f"none for {name}: internal", 0.0)
        for name, _ in self.of_type("AWS::EC2::NatGateway"):
            self.add("NAT gateway", name, (float(self.prices["nat_gateway_hourly"]) + ipv4 / self.hours)
                     * self.hours)

    def databases(self) -> None:
        for name, db in self.of_type("AWS::RDS::DBInstance"):
            props = db["Properties"]
            instance_class = str(self.ev.value(props.get("DBInstanceClass")))
            multi_az = self.ev.flag(props.get("MultiAZ"))
            factor = float(self.prices["rds_multi_az_factor"]) if multi_az else 1.0
            zones = "Multi-AZ" if multi_az else "single-AZ"
            self.add("database", f"{name}: {instance_class} PostgreSQL, {zones}",
                     _price(self.prices, "rds_postgresql_single_az_hourly", instance_class)
                     * self.hours * factor)
            # A read replica's storage is its source's (the template gives it none).
            source = props.get("SourceDBInstanceIdentifier")
            source_name = source.get("Ref") if isinstance(source, dict) else None
            storage = self.resources[source_name]["Properties"] if source_name in self.resources else props
            storage_type = str(self.ev.value(storage.get("StorageType", "gp3")))
            size = self.ev.number(storage.get("AllocatedStorage"), 20)
            self.add("database storage", f"{size:g} GiB {storage_type}, {zones} (backups within "
                     "the free allowance of one copy)",
                     size * _price(self.prices, "rds_storage_gb_month", storage_type) * factor)

    def caches(self) -> None:
        for name, group in self.of_type("AWS::ElastiCache::ReplicationGroup"):
            props = group["Properties"]
            node_type = str(self.ev.value(props.get("CacheNodeType")))
            nodes = int(self.ev.number(props.get("NumCacheClusters"), 0)) or int(
                self.ev.number(props.get("NumNodeGroups"), 1)
                * (1 + self.ev.number(props.get("ReplicasPerNodeGroup"), 0)))
            engine = str(self.ev.value(props.get("Engine", "redis")))
            hourly = _price(self.prices, "elasticache_redis_hourly", node_type)
            if engine == "valkey":
                hourly *= float(self.prices["elasticache_valkey_factor"])
            snapshots = self.ev.number(props.get("SnapshotRetentionLimit"), 0)
            kept = "one snapshot is free" if snapshots else "no snapshot"
            self.add("cache", f"{name}: {nodes} × {node_type} {engine} ({kept})",
                     nodes * hourly * self.hours)

    def search_domains(self) -> None:
        """OpenSearch data nodes by the hour and their EBS storage by the month (no free tier)."""
        for name, domain in self.of_type("AWS::OpenSearchService::Domain"):
            props = domain["Properties"]
            cluster = props.get("ClusterConfig", {})
            instance_type = str(self.ev.value(cluster.get("InstanceType")))
            count = int(self.ev.number(cluster.get("InstanceCount"), 1))
            self.add("search", f"{name}: {count} × {instance_type} OpenSearch",
                     count * _price(self.prices, "opensearch_hourly", instance_type) * self.hours)
            ebs = props.get("EBSOptions", {})
            volume_type = str(self.ev.value(ebs.get("VolumeType", "gp3")))
            size = self.ev.number(ebs.get("VolumeSize"), 10)
            self.add("search storage", f"{count} × {size:g} GiB {volume_type}",
                     count * size * _price(self.prices, "opensearch_storage_gb_month", volume_type))

    def per_month(self, resource_type: str, component: str, price_key: str) -> None:
        # Added even at zero: the estimate shows that it looked.
        found = self.of_type(resource_type)
        self.add(component, f"{len(found)} × {resource_type.split('::')[-1]}",
                 len(found) * float(self.prices[price_key]))

    def alarms(self) -> None:
        """CloudWatch bills an alarm per metric it watches: a metric-math alarm counts each one."""
        found = self.of_type("AWS::CloudWatch::Alarm")
        metrics = sum(
            sum(1 for query in alarm["Properties"].get("Metrics", []) if "MetricStat" in query) or 1
            for _, alarm in found)
        self.add("alarms", f"{len(found)} × Alarm, {metrics} metric(s)",
                 metrics * float(self.prices["alarm_month"]))

    def custom_metrics(self) -> None:
        """Metrics the servers publish bill per metric and month; the resource that grants the
        publishing says how many in its metadata."""
        for name, resource in self.resources.items():
            count = resource.get("Metadata", {}).get(CUSTOM_METRICS_METADATA)
            if count and self.ev.creates(name):
                self.add("custom metrics", f"{count} published every minute ({name})",
                         int(count) * float(self.prices["custom_metric_month"]))

    def dashboards(self) -> None:
        found = len(self.of_type("AWS::CloudWatch::Dashboard"))
        free = int(self.prices["free_dashboards_per_account"])
        self.add("dashboards", f"{found} × Dashboard (the first {free} of an account are free)",
                 max(found - free, 0) * float(self.prices["dashboard_month"]))

    def firewall(self) -> None:
        for name, acl in self.of_type("AWS::WAFv2::WebACL"):
            rules = len(acl["Properties"].get("Rules", []))
            self.add("WAF", f"{name}: web ACL + {rules} rule(s) (requests are traffic)",
                     float(self.prices["waf_web_acl_month"]) + rules * float(self.prices["waf_rule_month"]))

    def scheduled_functions(self) -> None:
        """A function a schedule runs bills whether or not there is traffic: requests, duration,
        its queue's receives and its log lines; one that invalidates CloudFront also pays paths."""
        assumptions = self.prices["assumptions"]
        for name, rule in self.of_type("AWS::Events::Rule"):
            runs = _runs_per_month(rule["Properties"].get("ScheduleExpression", ""),
                                   float(self.prices["hours_per_month"]))
            for target in rule["Properties"].get("Targets", []) if runs else []:
                function = self.template["Resources"].get(_getatt_arn(target.get("Arn")) or "", {})
                if function.get("Type") != "AWS::Lambda::Function":
                    continue
                properties = function["Properties"]
                variables = properties.get("Environment", {}).get("Variables", {})
                seconds = float(assumptions["scheduled_run_seconds"])
                gb_seconds = runs * seconds * float(properties.get("MemorySize", 128)) / 1024
                queue_requests = runs * float(assumptions["scheduled_run_queue_requests"]) * (
                    "QUEUE_URL" in variables)
                log_gb = runs * float(assumptions["scheduled_run_log_kb"]) / 1024 / 1024
                memory = properties.get("MemorySize", 128)
                self.add("scheduled functions",
                         f"{name}: {runs:,.0f} runs × ~{seconds:g} s at {memory} MB"
                         + (", one queue receive each" if queue_requests else ""),
                         runs * float(self.prices["lambda_request"])
                         + gb_seconds * float(self.prices["lambda_gb_second_arm"])
                         + queue_requests * float(self.prices["sqs_request"])
                         + log_gb * float(self.prices["logs_ingestion_gb"]))

    def logs(self) -> None:
        if not self.servers:
            return
        gigabytes = self.servers * float(self.prices["assumptions"]["idle_log_gb_per_server_month"])
        retention = self.ev.number({"Ref": "LogRetentionDays"}, 30)
        stored = gigabytes * retention / 30
        self.add("log ingestion", f"~{gigabytes:g} GB from {self.servers} idle server(s), "
                 f"~{stored:g} GB kept ({retention:g} days)",
                 gigabytes * float(self.prices["logs_ingestion_gb"])
                 + stored * float(self.prices["logs_storage_gb_month"]))


# The operator's own secret of Mastodon's other settings (templates/settings.py): it bills
# like the stack's, whoever created it.
SETTINGS_SECRET_PARAMETER = "MastodonSettingsSecretArn"  # noqa: S105 (a parameter name, not a secret)


def _runs_per_month(expression: str, hours: float) -> float:
    """Runs a month of rate(N minute[s]|hour[s]|day[s]); 0 for anything else (cron counts elsewhere)."""
    parts = expression.removeprefix("rate(").removesuffix(")").split()
    if not expression.startswith("rate(") or len(parts) != 2 or not parts[0].isdigit():
        return 0.0
    minutes = {"minute": 1, "hour": 60, "day": 1440}.get(parts[1].rstrip("s"), 0) * int(parts[0])
    return hours * 60 / minutes if minutes else 0.0


def _getatt_arn(value: Any) -> str | None:
    getatt = value.get("Fn::GetAtt") if isinstance(value, dict) else None
    if isinstance(getatt, list) and getatt[1:] == ["Arn"]:
        return str(getatt[0])
    return None


def estimate(template: Mapping[str, Any], given: Mapping[str, str] | None, prices: Mapping[str, Any],
             spot: bool | None = None) -> Estimate:
    """Line items for the template with these parameter values (defaults where not given).

    spot=True prices every server as spot (what-if); None follows the template: its
    UseSpotInstances parameter where it has one, its MixedInstancesPolicy otherwise.
    """
    # Conditions may test the region (the load balancer is internal where CloudFront
    # has VPC origins): judge them in the price table's region.
    values = {**parameter_values(template, given), "AWS::Region": str(prices["region"])}
    if spot is None:
        spot = values.get(SPOT_PARAMETER, "false") == "true"
    counter = _Counter(template, values, prices, spot)
    counter.servers_and_volumes()
    counter.load_balancers()
    counter.databases()
    counter.caches()
    counter.search_domains()
    counter.per_month("AWS::SecretsManager::Secret", "secrets", "secret_month")
    if values.get(SETTINGS_SECRET_PARAMETER):
        counter.add("settings secret", "your secret of Mastodon's other settings (read by the servers)",
                    float(prices["secret_month"]))
    counter.per_month("AWS::KMS::Key", "KMS keys", "kms_key_month")
    counter.alarms()
    counter.custom_metrics()
    counter.dashboards()
    counter.firewall()
    counter.logs()
    counter.scheduled_functions()
    counter.add("usage-priced", USAGE_ONLY, 0.0)
    notes = [f"spot: {prices.get('spot_note', '')}"] if spot else []
    return Estimate(items=tuple(counter.items), region=str(prices["region"]), as_of=str(prices["as_of"]),
                    source=str(prices["source"]), notes=tuple(notes), spot=spot)
