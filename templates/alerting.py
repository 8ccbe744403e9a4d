"""The one shape of an alarm that mails the alert topic, and its trigger.

A leaf module: the alarms of every tier (alarms.py, search.py, settings.py) use it,
and settings.py is imported by compute.py, which alarms.py imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from troposphere import Ref, Sub, Template, cloudwatch, sns


@dataclass(frozen=True)
class Threshold:
    """An alarm's trigger: statistic over `period` seconds, `datapoints` of `evaluations`."""

    statistic: str
    comparison: str
    threshold: object
    period: int
    evaluations: int
    datapoints: int
    missing_data: str = "notBreaching"

    def properties(self) -> dict[str, object]:
        """The alarm's properties that say when it fires."""
        return {
            "Statistic": self.statistic,
            "ComparisonOperator": self.comparison,
            "Threshold": self.threshold,
            "Period": self.period,
            "EvaluationPeriods": self.evaluations,
            "DatapointsToAlarm": self.datapoints,
            "TreatMissingData": self.missing_data,
        }


# A failure a server logged (counted by a metric filter): once in five minutes is enough.
LOGGED_FAILURE = Threshold("Sum", "GreaterThanOrEqualToThreshold", 1, 300, 1, 1)


def topic_alarm(t: Template, name: str, topic: sns.Topic, summary: str, description: str,
                **properties: object) -> cloudwatch.Alarm:
    """An alarm named "<stack> <summary>" that notifies `topic` when it fires and when it recovers."""
    return t.add_resource(cloudwatch.Alarm(
        name,
        AlarmName=Sub(f"${{AWS::StackName}} {summary}"),
        AlarmDescription=description,
        AlarmActions=[Ref(topic)],
        OKActions=[Ref(topic)],
        **properties,
    ))
