#!/usr/bin/env python3
"""Publish the built template to S3 and print a console quick-create link per region.

    python scripts/publish.py --bucket my-templates-{region} --region us-east-1 \\
        --region eu-central-1 [--stack-name mastodon] [--parameters parameters/production.json]

Uploads the template (built now, or --template) to each region's bucket ("{region}"
in --bucket is replaced by the region's name; --create-buckets makes missing ones)
under a key that names its content's digest, so a published link never changes
meaning. Prints one quick-create link per region with the stack name and the
file's parameters filled in. Whoever opens a link must be able to read the object:
the same account, or a bucket policy that allows s3:GetObject.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from scripts import awscli, parameter_files, quick_create
from scripts.version import version_action


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=version_action(), help="print the project's version and exit")
    parser.add_argument("--bucket", required=True, help="bucket name; {region} is replaced per region")
    parser.add_argument("--region", action="append", required=True, dest="regions",
                        help="a region to publish in (repeatable)")
    parser.add_argument("--stack-name", default="mastodon", help="the stack name the links fill in")
    parser.add_argument("--parameters", type=Path, metavar="FILE",
                        help="pre-fill the link with this AWS-CLI parameter file's values (checked "
                        "against the template in every region given)")
    parser.add_argument("--template", type=Path, metavar="JSON", help="a pre-built JSON template")
    parser.add_argument("--prefix", default="mastodon", help="key prefix of the uploaded template")
    parser.add_argument("--create-buckets", action="store_true",
                        help="create each region's bucket, in that region, when it does not exist")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.template:
            template = args.template
        else:
            from scripts.deploy import built_template
            template = built_template()
        body = json.loads(template.read_text())
        # Checked in each region: a Rule may hold in one and not another (WafEnabled outside us-east-1).
        values = {}
        for region in args.regions if args.parameters else []:
            try:
                values = parameter_files.load(args.parameters, body, region)
            except parameter_files.ParameterFileError as error:
                raise ValueError(f"in {region}: {error}") from None
        if not quick_create.STACK_NAME.match(args.stack_name):
            raise ValueError(f"stack name {args.stack_name!r} is not valid for CloudFormation")
    except (OSError, json.JSONDecodeError, ValueError) as error:
        print(f"publish.py: error: {error}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(template.read_bytes()).hexdigest()[:16]
    key = f"{args.prefix}/{digest}/{template.name}"
    try:
        for region in args.regions:
            bucket = args.bucket.replace("{region}", region)
            if args.create_buckets:
                exists = True
                try:
                    awscli.run(["s3api", "head-bucket", "--bucket", bucket], region)
                except awscli.AwsError:
                    exists = False
                if not exists:
                    awscli.run(["s3", "mb", f"s3://{bucket}"], region)
            awscli.run(["s3", "cp", str(template), f"s3://{bucket}/{key}", "--only-show-errors"], region)
            url = quick_create.template_url(bucket, region, key)
            print(f"{region}: {url}")
            print(f"  {quick_create.link(region, url, args.stack_name, values, body)}")
    except awscli.AwsError as error:
        print(f"publish.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
