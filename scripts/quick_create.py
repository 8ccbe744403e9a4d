"""CloudFormation console quick-create links, in the form AWS documents.

https://<region>.console.aws.amazon.com/cloudformation/home?region=<region>
    #/stacks/quickcreate?templateURL=<url>&stackName=<name>&param_<Name>=<value>

(AWS CloudFormation User Guide, "Create quick-create links for stacks"): templateURL
is required, stackName optional (letters, digits and hyphens, starting with a
letter, at most 128 characters), and every template parameter that is not NoEcho
may be given as param_<ParameterName>. Every value is percent-encoded, so a
template URL or a value holding '&', '=', '#' or spaces survives the console.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")


def template_url(bucket: str, region: str, key: str) -> str:
    """The virtual-hosted-style HTTPS URL of an S3 object, which CloudFormation reads."""
    return f"https://{bucket}.s3.{region}.amazonaws.com/{quote(key)}"


def link(region: str, url: str, stack_name: str, values: Mapping[str, str],
         template: Mapping[str, Any] | None = None) -> str:
    if not STACK_NAME.match(stack_name):
        raise ValueError(f"stack name {stack_name!r}: letters, digits and hyphens, starting with a "
                         "letter, at most 128 characters")
    declared = (template or {}).get("Parameters", {})
    query = [("templateURL", url), ("stackName", stack_name)]
    query += [(f"param_{name}", value) for name, value in values.items()
              if not str(declared.get(name, {}).get("NoEcho", "false")).lower() == "true"]
    encoded = "&".join(f"{key}={quote(value, safe='')}" for key, value in query)
    return (f"https://{region}.console.aws.amazon.com/cloudformation/home?region={region}"
            f"#/stacks/quickcreate?{encoded}")
