"""The monthly cost estimate: it counts what bills, and reacts to what the parameters choose."""

from __future__ import annotations

import json

import pytest

from build import PRICES
from scripts import costs
from templates import capacity, parameters

TABLE = json.loads(PRICES.read_text())
BUDGET = 70.0


def estimate(template, spot=None, **given):
    return costs.estimate(template, given, TABLE, spot=spot)


def test_the_price_table_is_dated_and_names_its_source():
    assert TABLE["region"] == "us-east-1" and TABLE["as_of"][:2] == "20"
    assert "aws.amazon.com" in TABLE["source"] and "Price List API" in TABLE["source"]


def test_every_choice_the_template_allows_has_a_price():
    assert {i.name for i in capacity.INSTANCE_TYPES} <= set(TABLE["ec2_hourly"])
    assert {d.name for d in capacity.DATABASE_CLASSES} <= set(TABLE["rds_postgresql_single_az_hourly"])
    assert set(parameters.CACHE_NODE_TYPES) <= set(TABLE["elasticache_redis_hourly"])


def test_the_default_stack_counts_everything_that_bills(template):
    items = {i.component for i in estimate(template).items}
    assert items >= {"web servers", "web EBS", "worker servers", "worker EBS", "public IPv4",
                     "load balancer", "database", "database storage", "cache", "secrets", "KMS keys",
                     "log ingestion"}


IPV4_MONTH = TABLE["public_ipv4_hourly"] * TABLE["hours_per_month"]


def test_public_ipv4_covers_every_server_and_none_for_the_internal_load_balancer(template):
    # us-east-1 has CloudFront VPC origins: the load balancer is internal there.
    assert estimate(template).component("public IPv4") == pytest.approx((1 + 1) * IPV4_MONTH, abs=0.02)
    assert estimate(template, WebMinSize="3").component("public IPv4") == pytest.approx(
        4 * IPV4_MONTH, abs=0.02)
    assert "internal" in next(i.detail for i in estimate(template).items
                              if i.component == "public IPv4" and "LoadBalancer" in i.detail)


def test_a_region_without_vpc_origins_pays_for_the_load_balancers_addresses(template):
    # Priced with us-east-1's table, judged as if the stack were in a region CloudFront
    # does not list for VPC origins: the load balancer faces the internet, one address a zone.
    elsewhere = costs.estimate(template, {}, {**TABLE, "region": "ap-southeast-6"})
    here = estimate(template)
    assert elsewhere.component("public IPv4") == pytest.approx((1 + 1 + 2) * IPV4_MONTH, abs=0.02)
    assert elsewhere.total - here.total == pytest.approx(2 * IPV4_MONTH, abs=0.02)


def test_a_metric_math_alarm_costs_one_alarm_metric_per_metric_it_reads(template):
    # The options' alarms (with a Condition) are not created with the defaults.
    alarms = {n: r for n, r in template["Resources"].items()
              if r["Type"] == "AWS::CloudWatch::Alarm" and "Condition" not in r}
    three = json.loads(json.dumps(next(iter(alarms.values()))))
    three["Properties"] = {"Metrics": [{"Id": m, "MetricStat": {}} for m in "abc"] + [
        {"Id": "sum", "Expression": "a + b + c"}]}
    widened = {**template, "Resources": {**template["Resources"], "MathAlarm": three}}
    assert costs.estimate(widened, {}, TABLE).component("alarms") == pytest.approx(
        (len(alarms) + 3) * TABLE["alarm_month"], abs=0.001)


def test_the_estimate_reacts_to_instance_types_and_counts(template):
    base = estimate(template)
    bigger = estimate(template, WebInstanceType="t4g.medium")
    more = estimate(template, WebMinSize="3")
    assert bigger.component("web servers") == pytest.approx(2 * base.component("web servers"), abs=0.02)
    assert more.component("web servers") == pytest.approx(3 * base.component("web servers"), abs=0.02)
    assert more.component("web EBS") == pytest.approx(3 * base.component("web EBS"), abs=0.02)
    assert estimate(template, DatabaseInstanceClass="db.t4g.small").component("database") > base.component(
        "database")
    assert estimate(template, CacheNodeType="cache.t4g.small").component("cache") > base.component("cache")


def test_multi_az_doubles_the_database_and_its_storage(template):
    single, multi = estimate(template), estimate(template, DatabaseMultiAZ="true")
    for component in ("database", "database storage"):
        assert multi.component(component) == pytest.approx(2 * single.component(component), abs=0.02)


def test_spot_lowers_only_the_servers(template):
    on_demand, spot = estimate(template), estimate(template, spot=True)
    for component in ("web servers", "worker servers"):
        assert spot.component(component) == pytest.approx(
            on_demand.component(component) * TABLE["spot_fraction"], abs=0.02)
    assert on_demand.total - spot.total == pytest.approx(
        (1 - TABLE["spot_fraction"]) * (on_demand.component("web servers")
                                        + on_demand.component("worker servers")), abs=0.02)


def test_the_spot_parameter_moves_both_groups_to_spot(template):
    # The template's MixedInstancesPolicy takes spot capacity when UseSpotInstances is true.
    for name in ("WebAutoScalingGroup", "WorkerAutoScalingGroup"):
        distribution = template["Resources"][name]["Properties"]["MixedInstancesPolicy"][
            "InstancesDistribution"]
        assert distribution["OnDemandPercentageAboveBaseCapacity"] == {"Fn::If": ["UseSpot", 0, 100]}
    on_spot = estimate(template, UseSpotInstances="true")
    for group in ("web servers", "worker servers"):
        assert "1 spot" in next(i.detail for i in on_spot.items if i.component == group)
    assert "on-demand" in next(i.detail for i in estimate(template).items if i.component == "web servers")


def test_resources_behind_a_false_condition_cost_nothing(template):
    web_acls = [n for n, r in template["Resources"].items() if r["Type"] == "AWS::WAFv2::WebACL"]
    if not web_acls or "Condition" not in template["Resources"][web_acls[0]]:
        pytest.skip("no conditional web ACL in this template")
    assert estimate(template).component("WAF") == 0


# The default stack costs $69.98 (prices of the table's date): web t4g.small, worker
# t4g.micro, 8 GiB volumes, an internal load balancer behind a CloudFront VPC origin,
# and the media invalidation schedule ($0.03).
# The goal is $70; this guards against the default creeping up.
DEFAULT_TOTAL = 69.98


def test_the_default_stack_meets_the_budget_and_costs_no_more_than_today(template):
    assert estimate(template).total <= min(DEFAULT_TOTAL + 0.005, BUDGET)


def test_the_spot_option_is_well_below_the_budget(template):
    # "Well below": at least a sixth off the $70 goal.
    assert estimate(template, UseSpotInstances="true").total <= BUDGET * 5 / 6


def test_the_readme_states_todays_totals(template):
    readme = (PRICES.parent.parent / "README.md").read_text()
    assert f"**${estimate(template).total:.2f}/month**" in readme
    assert f"**${estimate(template, UseSpotInstances='true').total:.2f}**" in readme


@pytest.mark.parametrize("name", ["production", "staging", "medium", "large"])
def test_the_readme_states_what_each_example_file_costs(template, name):
    # The file's values as build.py --parameters prices them; README cannot drift from them.
    path = PRICES.parent.parent / "parameters" / f"{name}.json"
    values = {p["ParameterKey"]: p["ParameterValue"] for p in json.loads(path.read_text())}
    readme = (PRICES.parent.parent / "README.md").read_text()
    total = estimate(template, **values).total
    assert f"`parameters/{name}.json`" in readme
    assert f"**${total:.2f}/month**" in readme, f"{name}.json costs ${total:.2f}"


def _cache_lines(result):
    return {i.detail.split(":")[0]: i for i in result.items if i.component == "cache"}


def test_the_cache_only_redis_is_itemised_at_its_own_node_type(template):
    base = estimate(template)
    split = estimate(template, SeparateCacheNodeType="cache.t4g.small")
    assert set(_cache_lines(base)) == {"Cache"}
    rails_cache = _cache_lines(split)["RailsCache"]
    hourly = TABLE["elasticache_redis_hourly"]["cache.t4g.small"] * TABLE["elasticache_valkey_factor"]
    assert rails_cache.monthly == pytest.approx(hourly * TABLE["hours_per_month"], abs=0.01)
    assert "cache.t4g.small" in rails_cache.detail and "no snapshot" in rails_cache.detail
    # Plus its memory alarm; nothing else changes.
    assert split.total - base.total == pytest.approx(rails_cache.monthly + TABLE["alarm_month"], abs=0.02)


@pytest.mark.parametrize("mode", ["standby", "failover"])
def test_a_replica_doubles_the_sidekiq_redis(template, mode):
    single = _cache_lines(estimate(template))["Cache"]
    replicated = _cache_lines(estimate(template, CacheReplica=mode))["Cache"]
    assert replicated.monthly == pytest.approx(2 * single.monthly, abs=0.02)
    assert replicated.detail.startswith("Cache: 2 ×")
def test_search_is_itemised_by_nodes_and_storage_and_absent_by_default(template):
    assert estimate(template).component("search") == 0
    on = costs.estimate(template, {"SearchEnabled": "true", "SearchInstanceType": "r7g.large.search",
                                   "SearchInstanceCount": "2", "SearchVolumeSize": "50"}, TABLE)
    hours = TABLE["hours_per_month"]
    assert on.component("search") == pytest.approx(2 * TABLE["opensearch_hourly"]["r7g.large.search"] * hours,
                                                   abs=0.01)
    assert on.component("search storage") == pytest.approx(
        2 * 50 * TABLE["opensearch_storage_gb_month"]["gp3"], abs=0.01)
    # Its alarms bill too: red, yellow (two nodes), storage, failed index creation.
    assert on.component("alarms") - estimate(template).component("alarms") == pytest.approx(
        4 * TABLE["alarm_month"], abs=0.001)


def _profile(name):
    path = PRICES.parent.parent / "parameters" / f"{name}.json"
    return {p["ParameterKey"]: p["ParameterValue"] for p in json.loads(path.read_text())}


def test_the_large_profile_itemises_every_growth_option_it_turns_on(template):
    result = estimate(template, **_profile("large"))
    details = [item.detail for item in result.items]
    assert any(d.startswith("DatabaseReplica:") for d in details), details
    assert any(d.startswith("RailsCache:") for d in details), details
    assert any(d.startswith("Cache: 2 ×") for d in details), "the failover replica doubles the Sidekiq Redis"
    assert result.component("search") > 0 and result.component("search storage") > 0
    assert result.component("custom metrics") > 0  # the queue metrics
    assert any(i.component.startswith("queueworker") and i.monthly > 0 for i in result.items)


def test_the_profiles_grow_in_price_from_the_default(template):
    totals = [estimate(template).total] + [estimate(template, **_profile(n)).total
                                           for n in ("production", "medium", "large")]
    assert totals == sorted(totals) and len(set(totals)) == 4
