"""The rollout function: a rolling upgrade of the Mastodon servers, one short step per invocation.

The function's code is these modules, in this order; the build registers each under
its own name in the function's single inline file (templates/functions.assemble), so
the Lambda runs exactly the modules the tests import. This file imports nothing:
the build and the template read MODULES and names.py without boto3 or Powertools.
"""

MODULES = ("names", "versions", "plan", "state", "notices", "aws", "fleet", "steps", "handler")

# Other functions made of some of these modules: {function: modules, the last one's
# lambda_handler}. The push function shares plan.py's reading of versions and records.
ENTRIES = {"image_push": ("names", "versions", "push")}
