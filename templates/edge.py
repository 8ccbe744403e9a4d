"""CloudFront on the Mastodon domain, its certificate and the domain's DNS records.

One distribution serves everything:
- /system/*: media from the private S3 bucket through Origin Access Control, cached
  at the edge for at most MEDIA_EDGE_TTL_SECONDS (see there); a CloudFront function
  strips the /system prefix (Mastodon's object keys have none).
- the static files of Mastodon's public/ directory (STATIC_FILE_LIFETIMES: /packs,
  /assets, /emoji, /sounds, ...): from the load balancer, cached as long as Mastodon's
  nginx configuration lets caches keep them, keyed by path alone (no cookie, credential
  or query reaches the origin, so nothing personal can be cached).
- /api/v1/streaming*: to the load balancer uncached, WebSocket upgrade passed through.
- everything else (pages, API, ActivityPub): to the load balancer with every viewer
  header, cookie and query; cached only when Mastodon says `public` (the origin's
  Cache-Control is honoured, so its default `private, no-store` is never cached), and
  then under a key holding every header Mastodon varies on (PAGE_KEY_HEADERS), every
  cookie and the query, because CloudFront ignores Vary. That cache policy is also what
  lets CloudFront compress HTML, CSS, JavaScript and JSON on the way to the viewer.
CloudFront always adds the secret header the load balancer checks. Where the region
supports it, CloudFront reaches the internal load balancer through a VPC origin
(the UseVpcOrigin condition); elsewhere, the internet-facing one by its public name.
Either way the origin's name is the load balancer's DNS name, and the viewer's Host
header (forwarded by every load-balancer behavior) is what its certificate matches.

CloudFront takes certificates from us-east-1 only; a custom resource requests and
validates one there whatever the stack's region. Without a hosted zone the operator
gives the certificate's ARN and creates the records the outputs list.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import acm as awacs_acm
from awacs import awslambda as awacs_lambda
from awacs import route53 as awacs_route53
from awacs import s3 as awacs_s3
from awacs.aws import (
    Allow,
    Bool,
    Condition,
    Deny,
    ForAllValuesStringEquals,
    PolicyDocument,
    Principal,
    Statement,
    StringEquals,
)
from troposphere import (
    AWSObject,
    GetAtt,
    If,
    Join,
    Ref,
    Select,
    Split,
    Sub,
    Template,
    awslambda,
    cloudfront,
    route53,
    s3,
)

from templates import functions, parameters
from templates.load_balancing import ORIGIN_VERIFY_HEADER, LoadBalancing
from templates.parameters import USE_VPC_ORIGIN, Parameters
from templates.secrets import Secrets

DISTRIBUTION = "Distribution"
CLOUDFRONT_CERTIFICATE = "CloudFrontCertificate"
MEDIA_PATH = "/system"
MEDIA_HEADERS_POLICY = "MediaResponseHeadersPolicy"
MEDIA_CACHE_POLICY = "MediaCachePolicy"
# Media that Mastodon deletes (a removed post, a deleted or purged account, a takedown)
# must stop being served within minutes. Mastodon uploads every file with a ten-year
# Cache-Control max-age; CloudFront keeps an object for the lesser of max-age and the
# cache policy's maximum TTL, and passes the origin's header on to browsers ("Managing
# how long content stays in the cache", CloudFront developer guide). So the edge asks
# S3 again after five minutes (a conditional GET that S3 answers 304 while the file
# exists, 403 once it is gone), while browsers keep caching for years. An edge location
# may refresh from the regional edge cache, itself up to that old: ten minutes at worst.
# No invalidation to pay or to get throttled on; the bound holds for every deletion.
MEDIA_EDGE_TTL_SECONDS = 300
# CloudFront keeps an origin's error 10 seconds by default, per cache key, whatever its
# Cache-Control says ("Control how long CloudFront caches errors"): a 502 of a server
# going away, or a Rails error, would then be served to every viewer of that key. The
# server errors pass through uncached, with the origin's own body.
UNCACHED_ERRORS = (500, 502, 503, 504)
# The static paths Mastodon's dist/nginx.conf serves from public/ with a cache lifetime
# (PublicFileServerMiddleware sends the same when Puma serves them), in seconds: the
# one place they are counted. Each lifetime has its own cache policy.
STATIC_FILE_LIFETIMES: dict[str, int] = {
    **{f"/{folder}/*": 28 * 86400
       for folder in ("assets", "avatars", "emoji", "headers", "packs", "shortcuts", "sounds")},
    "/sw.js": 7 * 86400,
}
# Request headers Mastodon's cacheable responses depend on: its `vary_by` names Accept,
# Accept-Language, Cookie and Signature; Rack::Cors answers only a request with Origin;
# Authorization is a credential (and CloudFront forwards it on GET only from the key).
# CloudFront ignores Vary, so each must be in the key. Cookies and query are in it too.
PAGE_KEY_HEADERS = ("Accept", "Accept-Language", "Authorization", "Origin", "Signature")
# The longest CloudFront keeps what Mastodon marks public (it asks for at most 3 days,
# WebFinger); an upgrade invalidates everything anyway.
PAGE_MAX_TTL = 86400
STREAMING_PATH = "/api/v1/streaming*"
# CloudFront's hosted zone for alias records, the same in every partition region.
CLOUDFRONT_HOSTED_ZONE_ID = "Z2FDTNDATAQYW2"

# AWS-managed policies (IDs are global and documented).
CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"
CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER = "216adef6-5c7f-47e4-b989-5492eafa07d3"

ALL_METHODS = ["GET", "HEAD", "OPTIONS", "PUT", "PATCH", "POST", "DELETE"]
ORIGIN_READ_TIMEOUT = 60
ORIGIN_KEEPALIVE_TIMEOUT = 5

STRIP_MEDIA_PREFIX = f"""function handler(event) {{
  var request = event.request;
  request.uri = request.uri.substring({len(MEDIA_PATH)});
  return request;
}}
"""


def _global_name(purpose: str) -> Join:
    """A CloudFront name (global, at most 64 characters) unique to this stack.

    CloudFront names are account-wide, not regional: the stack ID's UUID tells apart
    two stacks of the same name in different regions.
    """
    return Join("-", ["mastodon", purpose, Select(2, Split("/", Ref("AWS::StackId")))])


@dataclass(frozen=True)
class Edge:
    distribution: cloudfront.Distribution

    def distribution_arn(self) -> Sub:
        """For the grants of other tiers (CloudFront ARNs have no region)."""
        return Sub("arn:${AWS::Partition}:cloudfront::${AWS::AccountId}:distribution/"
                   f"${{{self.distribution.title}}}")


def create_edge(t: Template, p: Parameters, load_balancing: LoadBalancing, bucket: s3.Bucket,
                secrets: Secrets, certificate_code: str, web_acl: object = None) -> Edge:
    """The distribution; `web_acl` is a WAFv2 web ACL ARN (or an If of one) to attach."""
    certificate_arn = If(
        parameters.HAS_HOSTED_ZONE,
        GetAtt(_cloudfront_certificate(t, p, certificate_code), "Arn"),
        Ref(p.cloudfront_certificate),
    )
    access_control = t.add_resource(cloudfront.OriginAccessControl(
        "MediaOriginAccessControl",
        OriginAccessControlConfig=cloudfront.OriginAccessControlConfig(
            Name=_global_name("media"),
            OriginAccessControlOriginType="s3",
            SigningBehavior="always",
            SigningProtocol="sigv4",
        ),
    ))
    strip_prefix = t.add_resource(cloudfront.Function(
        "MediaPathFunction",
        Name=_global_name("media-path"),
        AutoPublish=True,
        FunctionCode=STRIP_MEDIA_PREFIX,
        FunctionConfig=cloudfront.FunctionConfig(
            Comment="Strips /system from media paths", Runtime="cloudfront-js-2.0"),
    ))
    # Cached assets still need the viewer's Host: the load balancer's certificate is
    # for the Mastodon domain, and Rails answers only for it.
    host_only = t.add_resource(cloudfront.OriginRequestPolicy(
        "AssetOriginRequestPolicy",
        OriginRequestPolicyConfig=cloudfront.OriginRequestPolicyConfig(
            Name=_global_name("assets"),
            Comment="Host header only",
            HeadersConfig=cloudfront.OriginRequestHeadersConfig(
                HeaderBehavior="whitelist", Headers=["Host"]),
            CookiesConfig=cloudfront.OriginRequestCookiesConfig(CookieBehavior="none"),
            QueryStringsConfig=cloudfront.OriginRequestQueryStringsConfig(QueryStringBehavior="none"),
        ),
    ))
    media_cache = t.add_resource(cloudfront.CachePolicy(
        MEDIA_CACHE_POLICY,
        CachePolicyConfig=cloudfront.CachePolicyConfig(
            Name=_global_name("media-cache"),
            Comment="Media: the path only; at most a few minutes at the edge",
            MinTTL=0,
            DefaultTTL=MEDIA_EDGE_TTL_SECONDS,
            MaxTTL=MEDIA_EDGE_TTL_SECONDS,
            ParametersInCacheKeyAndForwardedToOrigin=cloudfront.ParametersInCacheKeyAndForwardedToOrigin(
                CookiesConfig=cloudfront.CacheCookiesConfig(CookieBehavior="none"),
                HeadersConfig=cloudfront.CacheHeadersConfig(HeaderBehavior="none"),
                QueryStringsConfig=cloudfront.CacheQueryStringsConfig(QueryStringBehavior="none"),
                EnableAcceptEncodingGzip=True,
                EnableAcceptEncodingBrotli=True,
            ),
        ),
    ))
    media_headers = t.add_resource(cloudfront.ResponseHeadersPolicy(
        MEDIA_HEADERS_POLICY,
        ResponseHeadersPolicyConfig=cloudfront.ResponseHeadersPolicyConfig(
            Name=_global_name("media-headers"),
            Comment="Uploaded files never run as a page; any site may load them",
            # Third-party web clients load media cross-origin (fetch, canvas, video).
            CorsConfig=cloudfront.CorsConfig(
                AccessControlAllowOrigins=cloudfront.AccessControlAllowOrigins(Items=["*"]),
                AccessControlAllowHeaders=cloudfront.AccessControlAllowHeaders(Items=["*"]),
                AccessControlAllowMethods=cloudfront.AccessControlAllowMethods(
                    Items=["GET", "HEAD", "OPTIONS"]),
                AccessControlAllowCredentials=False,
                AccessControlMaxAgeSec=86400,
                OriginOverride=True,
            ),
            SecurityHeadersConfig=cloudfront.SecurityHeadersConfig(
                ContentSecurityPolicy=cloudfront.ContentSecurityPolicy(
                    ContentSecurityPolicy="default-src 'none'; form-action 'none'", Override=True),
                ContentTypeOptions=cloudfront.ContentTypeOptions(Override=True),
                StrictTransportSecurity=cloudfront.StrictTransportSecurity(
                    AccessControlMaxAgeSec=63072000, IncludeSubdomains=False, Override=True),
            ),
        ),
    ))
    # A VPC origin cannot be changed while a distribution uses it (CloudFront answers
    # 409), so it carries nothing that changes over the stack's life.
    vpc_origin = t.add_resource(cloudfront.VpcOrigin(
        "LoadBalancerVpcOrigin",
        Condition=USE_VPC_ORIGIN,
        VpcOriginEndpointConfig=cloudfront.VpcOriginEndpointConfig(
            Name=_global_name("origin"),
            Arn=Ref(load_balancing.load_balancer),
            HTTPPort=80,
            HTTPSPort=443,
            OriginProtocolPolicy="https-only",
            OriginSSLProtocols=["TLSv1.2"],
        ),
    ))
    load_balancer_origin = cloudfront.Origin(
        Id="load-balancer",
        DomainName=GetAtt(load_balancing.load_balancer, "DNSName"),
        VpcOriginConfig=If(USE_VPC_ORIGIN, cloudfront.VpcOriginConfig(
            VpcOriginId=GetAtt(vpc_origin, "Id"),
            OriginReadTimeout=ORIGIN_READ_TIMEOUT,
            OriginKeepaliveTimeout=ORIGIN_KEEPALIVE_TIMEOUT,
        ), Ref("AWS::NoValue")),
        CustomOriginConfig=If(USE_VPC_ORIGIN, Ref("AWS::NoValue"), cloudfront.CustomOriginConfig(
            OriginProtocolPolicy="https-only",
            OriginSSLProtocols=["TLSv1.2"],
            OriginReadTimeout=ORIGIN_READ_TIMEOUT,
            OriginKeepaliveTimeout=ORIGIN_KEEPALIVE_TIMEOUT,
        )),
        OriginCustomHeaders=[cloudfront.OriginCustomHeader(
            HeaderName=ORIGIN_VERIFY_HEADER, HeaderValue=secrets.reference("ORIGIN_VERIFY"))],
    )
    media_origin = cloudfront.Origin(
        Id="media",
        DomainName=GetAtt(bucket, "RegionalDomainName"),
        OriginAccessControlId=GetAtt(access_control, "Id"),
        S3OriginConfig=cloudfront.S3OriginConfig(OriginAccessIdentity=""),
    )
    to_load_balancer = dict(
        TargetOriginId="load-balancer",
        ViewerProtocolPolicy="redirect-to-https",
        AllowedMethods=ALL_METHODS,
        CachedMethods=["GET", "HEAD"],
        OriginRequestPolicyId=ALL_VIEWER,
    )
    static_policies = _static_cache_policies(t)
    behaviors = [
        cloudfront.CacheBehavior(
            PathPattern=f"{MEDIA_PATH}/*",
            TargetOriginId="media",
            ViewerProtocolPolicy="redirect-to-https",
            AllowedMethods=["GET", "HEAD", "OPTIONS"],
            CachedMethods=["GET", "HEAD"],
            CachePolicyId=Ref(media_cache),
            ResponseHeadersPolicyId=Ref(media_headers),
            FunctionAssociations=[cloudfront.FunctionAssociation(
                EventType="viewer-request", FunctionARN=GetAtt(strip_prefix, "FunctionARN"))],
            Compress=True,
        ),
        # Never cached, never compressed: a WebSocket or an event stream must not wait
        # for a body to end.
        cloudfront.CacheBehavior(PathPattern=STREAMING_PATH, CachePolicyId=CACHING_DISABLED,
                                 Compress=False, **to_load_balancer),
        *[cloudfront.CacheBehavior(
            PathPattern=path,
            TargetOriginId="load-balancer",
            ViewerProtocolPolicy="redirect-to-https",
            AllowedMethods=["GET", "HEAD"],
            CachedMethods=["GET", "HEAD"],
            CachePolicyId=Ref(static_policies[lifetime]),
            OriginRequestPolicyId=Ref(host_only),
            Compress=True,
        ) for path, lifetime in STATIC_FILE_LIFETIMES.items()],
    ]
    pages = cloudfront.DefaultCacheBehavior(
        CachePolicyId=Ref(_page_cache_policy(t)), Compress=True, **to_load_balancer)
    distribution = t.add_resource(cloudfront.Distribution(
        DISTRIBUTION,
        DistributionConfig=cloudfront.DistributionConfig(
            Enabled=True,
            Comment=Sub("Mastodon ${DomainName}"),
            Aliases=[Ref(p.domain)],
            HttpVersion="http2and3",
            IPV6Enabled=True,
            PriceClass="PriceClass_100",
            WebACLId=web_acl if web_acl is not None else Ref("AWS::NoValue"),
            Origins=[load_balancer_origin, media_origin],
            DefaultCacheBehavior=pages,
            CacheBehaviors=behaviors,
            CustomErrorResponses=[cloudfront.CustomErrorResponse(ErrorCode=code, ErrorCachingMinTTL=0)
                                  for code in UNCACHED_ERRORS],
            ViewerCertificate=cloudfront.ViewerCertificate(
                AcmCertificateArn=certificate_arn,
                SslSupportMethod="sni-only",
                MinimumProtocolVersion="TLSv1.2_2021",
            ),
        ),
        DependsOn=[secrets.values.title],
        Metadata={
            "cfn-lint": {"config": {"ignore_checks": ["W1030"]}},
            "cfn-lint-reasons": {"W1030": "CloudFrontCertificateArn may be empty, but it is used "
                                 "only without a hosted zone, where rule CertificatesWithoutHostedZone "
                                 "requires it."},
            "checkov": {"skip": [
            {"id": "CKV_AWS_86", "comment": "Standard logs cost per request and are off by "
             "default; the load balancer's targets log every request to CloudWatch."},
            ]},
        },
    ))
    _media_bucket_policy(t, bucket, distribution)
    for record_type in ("A", "AAAA"):
        t.add_resource(route53.RecordSetType(
            f"DomainRecord{record_type}",
            Condition=parameters.HAS_HOSTED_ZONE,
            HostedZoneId=Ref(p.hosted_zone),
            Name=Ref(p.domain),
            Type=record_type,
            AliasTarget=route53.AliasTarget(
                DNSName=GetAtt(distribution, "DomainName"), HostedZoneId=CLOUDFRONT_HOSTED_ZONE_ID),
        ))
    return Edge(distribution=distribution)


def _static_cache_policies(t: Template) -> dict[int, cloudfront.CachePolicy]:
    """One cache policy per static-file lifetime: the path alone is the key.

    The lifetime is the default (Puma sends it anyway) and the cap; a minimum of 0 lets
    a `no-store` from the origin (a missing file's error page) keep its word.
    """
    policies = {}
    for lifetime in sorted(set(STATIC_FILE_LIFETIMES.values())):
        days = lifetime // 86400
        policies[lifetime] = t.add_resource(cloudfront.CachePolicy(
            f"StaticFilesCachePolicy{days}Days",
            CachePolicyConfig=cloudfront.CachePolicyConfig(
                Name=_global_name(f"static-{days}d"),
                Comment=f"Mastodon's static files, {days} days as its nginx configuration says",
                MinTTL=0,
                DefaultTTL=lifetime,
                MaxTTL=lifetime,
                ParametersInCacheKeyAndForwardedToOrigin=cloudfront.ParametersInCacheKeyAndForwardedToOrigin(
                    EnableAcceptEncodingGzip=True,
                    EnableAcceptEncodingBrotli=True,
                    HeadersConfig=cloudfront.CacheHeadersConfig(HeaderBehavior="none"),
                    CookiesConfig=cloudfront.CacheCookiesConfig(CookieBehavior="none"),
                    QueryStringsConfig=cloudfront.CacheQueryStringsConfig(QueryStringBehavior="none"),
                ),
            ),
        ))
    return policies


def _page_cache_policy(t: Template) -> cloudfront.CachePolicy:
    """What Mastodon itself marks public is cached, under a key of all it varies on.

    Minimum and default TTL 0: a response without Cache-Control, or with `private`,
    `no-store` or `no-cache` (Mastodon's default, and what it sends whenever a request
    carries a cookie, Authorization or Signature its answer varies on), is not cached.
    A maximum above 0 is what allows the Accept-Encoding settings, and so compression.
    """
    return t.add_resource(cloudfront.CachePolicy(
        "PageCachePolicy",
        CachePolicyConfig=cloudfront.CachePolicyConfig(
            Name=_global_name("pages"),
            Comment="Honours Mastodon's Cache-Control; keyed by all it varies on",
            MinTTL=0,
            DefaultTTL=0,
            MaxTTL=PAGE_MAX_TTL,
            ParametersInCacheKeyAndForwardedToOrigin=cloudfront.ParametersInCacheKeyAndForwardedToOrigin(
                EnableAcceptEncodingGzip=True,
                EnableAcceptEncodingBrotli=True,
                HeadersConfig=cloudfront.CacheHeadersConfig(
                    HeaderBehavior="whitelist", Headers=list(PAGE_KEY_HEADERS)),
                CookiesConfig=cloudfront.CacheCookiesConfig(CookieBehavior="all"),
                QueryStringsConfig=cloudfront.CacheQueryStringsConfig(QueryStringBehavior="all"),
            ),
        ),
    ))


def _media_bucket_policy(t: Template, bucket: s3.Bucket, distribution: cloudfront.Distribution) -> None:
    distribution_arn = Sub("arn:${AWS::Partition}:cloudfront::${AWS::AccountId}:distribution/"
                           f"${{{distribution.title}}}")
    t.add_resource(s3.BucketPolicy(
        "MediaBucketPolicy",
        Bucket=Ref(bucket),
        PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=[
            Statement(
                Sid="CloudFrontReadsMedia",
                Effect=Allow,
                Principal=Principal("Service", "cloudfront.amazonaws.com"),
                Action=[awacs_s3.GetObject],
                Resource=[Join("", [GetAtt(bucket, "Arn"), "/*"])],
                Condition=Condition(StringEquals("AWS:SourceArn", distribution_arn)),
            ),
            Statement(
                Sid="TlsOnly",
                Effect=Deny,
                Principal=Principal("*"),
                Action=[awacs_s3.Action("*")],
                Resource=[GetAtt(bucket, "Arn"), Join("", [GetAtt(bucket, "Arn"), "/*"])],
                Condition=Condition(Bool("aws:SecureTransport", "false")),
            ),
        ]),
    ))


def _cloudfront_certificate(t: Template, p: Parameters, code: str) -> AWSObject:
    us_east_1_certificates = "arn:${AWS::Partition}:acm:us-east-1:${AWS::AccountId}:certificate/*"
    function = functions.inline_function(
        t, "CertificateFunction", code,
        [
            # RequestCertificate takes no resource ARN; its condition keys (ACM User Guide,
            # "Use condition keys with ACM") bound it to DNS-validated certificates for
            # the domain alone.
            Statement(Effect=Allow, Action=[awacs_acm.RequestCertificate], Resource=["*"],
                      Condition=Condition([
                          StringEquals("acm:ValidationMethod", "DNS"),
                          ForAllValuesStringEquals("acm:DomainNames", [Ref(p.domain)]),
                      ])),
            Statement(Effect=Allow, Action=[awacs_acm.AddTagsToCertificate, awacs_acm.DescribeCertificate,
                                            awacs_acm.DeleteCertificate],
                      Resource=[Sub(us_east_1_certificates)]),
            Statement(Effect=Allow,
                      Action=[awacs_route53.GetHostedZone, awacs_route53.ChangeResourceRecordSets],
                      Resource=[Sub("arn:${AWS::Partition}:route53:::hostedzone/${HostedZoneId}")]),
        ],
        Ref(p.log_retention), timeout=900,
        description="Requests and DNS-validates the CloudFront certificate in us-east-1.",
        condition=parameters.HAS_HOSTED_ZONE,
    )
    # The function re-invokes itself to keep waiting past one invocation's 15 minutes;
    # a resource policy naming its role avoids a role-function dependency cycle.
    t.add_resource(awslambda.Permission(
        "CertificateFunctionSelfInvoke",
        Condition=parameters.HAS_HOSTED_ZONE,
        Action=awacs_lambda.InvokeFunction.JSONrepr(),
        FunctionName=Ref(function),
        Principal=GetAtt(functions.role_of(t, function), "Arn"),
    ))
    certificate = functions.provided_resource(
        t, "CloudFrontCertificate", CLOUDFRONT_CERTIFICATE, function, 3600,
        Condition=parameters.HAS_HOSTED_ZONE,
        DomainName=Ref(p.domain),
        HostedZoneId=Ref(p.hosted_zone),
        DependsOn=["CertificateFunctionSelfInvoke"],
    )
    return certificate
