"""The VPC: public subnets for the load balancer and servers, isolated ones for data.

Two availability zones. Servers reach the container registry and AWS APIs through
the internet gateway with a public address (no NAT gateway to pay for); inbound
traffic is closed by security groups. The data subnets have no route to the
internet at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from troposphere import GetAZs, Ref, Select, Tags, Template, ec2

VPC = "Vpc"
VPC_CIDR = "10.42.0.0/16"
PUBLIC_SUBNET_CIDRS = ("10.42.0.0/20", "10.42.16.0/20")
DATA_SUBNET_CIDRS = ("10.42.128.0/24", "10.42.129.0/24")


@dataclass(frozen=True)
class Network:
    vpc: ec2.VPC
    public_subnets: list[ec2.Subnet]
    data_subnets: list[ec2.Subnet]


def create_network(t: Template) -> Network:
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

    public, data = [], []
    for zone, (public_cidr, data_cidr) in enumerate(zip(PUBLIC_SUBNET_CIDRS, DATA_SUBNET_CIDRS, strict=True)):
        letter = "AB"[zone]
        subnet = t.add_resource(ec2.Subnet(
            f"PublicSubnet{letter}", VpcId=Ref(vpc), CidrBlock=public_cidr,
            AvailabilityZone=Select(zone, GetAZs("")), MapPublicIpOnLaunch=False,
            Tags=Tags(Name=f"mastodon-public-{letter.lower()}"),
        ))
        t.add_resource(ec2.SubnetRouteTableAssociation(
            f"PublicSubnet{letter}Routes", SubnetId=Ref(subnet), RouteTableId=Ref(public_routes),
        ))
        public.append(subnet)
        subnet = t.add_resource(ec2.Subnet(
            f"DataSubnet{letter}", VpcId=Ref(vpc), CidrBlock=data_cidr,
            AvailabilityZone=Select(zone, GetAZs("")), MapPublicIpOnLaunch=False,
            Tags=Tags(Name=f"mastodon-data-{letter.lower()}"),
        ))
        t.add_resource(ec2.SubnetRouteTableAssociation(
            f"DataSubnet{letter}Routes", SubnetId=Ref(subnet), RouteTableId=Ref(data_routes),
        ))
        data.append(subnet)
    return Network(vpc=vpc, public_subnets=public, data_subnets=data)
