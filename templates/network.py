"""The VPC: public subnets for the servers, private ones for data and the load balancer.

Two availability zones, picked by a custom resource rather than Fn::GetAZs: CloudFront
VPC origins do not work in some zone IDs (ORIGIN_EXCLUDED_ZONE_IDS), and a zone's name
maps to a different ID in every account, so only a lookup can avoid them. The zones
are chosen once and never move (moving them would replace every subnet); a stack
created before this lookup keeps the zones its subnets are in.

Servers reach the container registry, other Mastodon servers and AWS APIs through the
internet gateway with a public address (no NAT gateway to pay for); inbound traffic
is closed by security groups. The private subnets have no route to the internet at
all: the database, the cache and, where CloudFront reaches it through a VPC origin,
the internal load balancer live there.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import ec2 as awacs_ec2
from awacs.aws import Allow, Statement
from troposphere import AWSObject, GetAtt, If, Ref, Tags, Template, ec2

from templates import functions
from templates.parameters import USE_VPC_ORIGIN, Parameters

VPC = "Vpc"
VPC_CIDR = "10.42.0.0/16"
PUBLIC_SUBNET_CIDRS = ("10.42.0.0/20", "10.42.16.0/20")
DATA_SUBNET_CIDRS = ("10.42.128.0/24", "10.42.129.0/24")
ZONE_LETTERS = "AB"
AVAILABILITY_ZONES = "AvailabilityZones"
# Zone IDs where CloudFront VPC origins are not supported, from the CloudFront
# Developer Guide ("Restrict access with VPC origins", supported Regions, 2025-2026).
ORIGIN_EXCLUDED_ZONE_IDS = ("use1-az3", "usw1-az2", "cac1-az3", "apne1-az3")


@dataclass(frozen=True)
class Network:
    vpc: ec2.VPC
    public_subnets: list[ec2.Subnet]
    data_subnets: list[ec2.Subnet]


def create_network(t: Template, p: Parameters, zones_code: str) -> Network:
    zones = _availability_zones(t, p, zones_code)
    vpc = t.add_resource(ec2.VPC(
        VPC, CidrBlock=VPC_CIDR, EnableDnsHostnames=True, EnableDnsSupport=True,
        Tags=Tags(Name="mastodon"),
    ))
    gateway = t.add_resource(ec2.InternetGateway("InternetGateway"))
    attachment = t.add_resource(ec2.VPCGatewayAttachment(
        "InternetGatewayAttachment", VpcId=Ref(vpc), InternetGatewayId=Ref(gateway),
    ))
    public_routes = t.add_resource(ec2.RouteTable("PublicRouteTable", VpcId=Ref(vpc)))
    t.add_resource(ec2.Route(
        "PublicDefaultRoute", RouteTableId=Ref(public_routes),
        DestinationCidrBlock="0.0.0.0/0", GatewayId=Ref(gateway),
        DependsOn=attachment.title,
    ))
    # The data subnets share a route table with only the implicit local route.
    data_routes = t.add_resource(ec2.RouteTable("DataRouteTable", VpcId=Ref(vpc)))

    def subnet(kind: str, zone: int, cidr: str, routes: ec2.RouteTable) -> ec2.Subnet:
        """The zone's subnet of one kind ("Public" or "Data"), on the kind's route table."""
        title = f"{kind}Subnet{ZONE_LETTERS[zone]}"
        created = t.add_resource(ec2.Subnet(
            title, VpcId=Ref(vpc), CidrBlock=cidr,
            AvailabilityZone=GetAtt(zones, f"Zone{zone + 1}"), MapPublicIpOnLaunch=False,
            Tags=Tags(Name=f"mastodon-{kind.lower()}-{ZONE_LETTERS[zone].lower()}"),
        ))
        t.add_resource(ec2.SubnetRouteTableAssociation(
            f"{title}Routes", SubnetId=Ref(created), RouteTableId=Ref(routes),
        ))
        return created

    public = [subnet("Public", zone, cidr, public_routes) for zone, cidr in enumerate(PUBLIC_SUBNET_CIDRS)]
    data = [subnet("Data", zone, cidr, data_routes) for zone, cidr in enumerate(DATA_SUBNET_CIDRS)]
    return Network(vpc=vpc, public_subnets=public, data_subnets=data)


def _availability_zones(t: Template, p: Parameters, code: str) -> AWSObject:
    function = functions.inline_function(
        t, "AvailabilityZonesFunction", code,
        # Neither Describe call accepts a resource-level permission.
        [Statement(Effect=Allow, Action=[awacs_ec2.DescribeAvailabilityZones, awacs_ec2.DescribeSubnets],
                   Resource=["*"])],
        Ref(p.log_retention), timeout=60,
        description="Picks the availability zones for the subnets, once.",
    )
    return functions.provided_resource(
        t, "AvailabilityZones", AVAILABILITY_ZONES, function, 120,
        Count=str(len(PUBLIC_SUBNET_CIDRS)),
        # Only a load balancer behind a VPC origin cares which zone IDs it sits in.
        ExcludedZoneIds=If(USE_VPC_ORIGIN, list(ORIGIN_EXCLUDED_ZONE_IDS), []),
        # A stack made before this resource existed keeps its subnets' zones.
        SubnetLogicalIds=[f"PublicSubnet{letter}" for letter in ZONE_LETTERS],
    )
