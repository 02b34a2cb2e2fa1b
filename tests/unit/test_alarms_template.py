"""template.yaml's alarms and dashboard: every alarm issue 13 names exists, watches the metric it claims (with the
dimensions the layer writes it with) and notifies the AlarmTopicArn parameter; the dashboard body is valid JSON
naming the metrics it should. The template is read as CloudFormation reads it (cfn-lint's decoder)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT

LAYER = ROOT / "layers" / "imagegw" / "imagegw"
NOTIFY = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
FUNCTIONS = ("SubmitFunction", "PollFunction", "FetchFunction")


@pytest.fixture(scope="module")
def template() -> dict:
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.loads((ROOT / "template.yaml").read_text(encoding="utf-8"))


def alarms(template: dict) -> dict[str, dict]:
    return {name: res["Properties"] for name, res in template["Resources"].items()
            if res["Type"] == "AWS::CloudWatch::Alarm"}


def watching(template: dict, namespace: str, metric: str) -> list[dict]:
    """The alarms on `metric` of `namespace`, as a single metric or inside their metric math."""
    found = []
    for props in alarms(template).values():
        stats = [props] + [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        if any(s.get("Namespace") == namespace and s.get("MetricName") == metric for s in stats):
            found.append(props)
    return found


def dims(metric: dict) -> dict:
    return {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}


def gateway_namespace(template: dict) -> str:
    return template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]


def test_the_topic_parameter_is_optional_and_every_alarm_notifies_it(template):
    parameter = template["Parameters"]["AlarmTopicArn"]
    assert parameter["Default"] == "" and re.fullmatch(parameter["AllowedPattern"], "")
    assert re.fullmatch(parameter["AllowedPattern"], "arn:aws:sns:eu-west-1:123456789012:oncall")
    assert template["Conditions"]["HasAlarmTopic"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}
    assert len(alarms(template)) >= 10
    for name, props in alarms(template).items():
        assert props["AlarmActions"] == NOTIFY and props["OKActions"] == NOTIFY, name
        assert "README" in props["AlarmDescription"], name  # says where to read what to do


def test_dead_letter_queue_depth(template):
    (alarm,) = watching(template, "AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert dims(alarm) == {"QueueName": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}
    assert template["Resources"]["DeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    assert alarm["Threshold"] == 1 and alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_each_function_has_error_and_throttle_alarms(template, metric):
    watched = sorted(dims(a)["FunctionName"]["Ref"] for a in watching(template, "AWS/Lambda", metric))
    assert watched == sorted(FUNCTIONS)


def test_the_api_5xx_rate(template):
    (alarm,) = watching(template, "AWS/ApiGateway", "5XXError")
    stats = {m["Id"]: m for m in alarm["Metrics"]}
    for metric_id in ("errors", "requests"):
        metric = stats[metric_id]["MetricStat"]["Metric"]
        assert dims(metric) == {"ApiName": {"Ref": "AWS::StackName"}, "Stage": "prod"}
    assert template["Resources"]["GatewayApi"]["Properties"]["StageName"] == "prod"
    assert stats["requests"]["MetricStat"]["Metric"]["MetricName"] == "Count"
    (returned,) = [m for m in alarm["Metrics"] if m["ReturnData"]]
    assert "errors / requests" in returned["Expression"]  # a rate, not a count


@pytest.mark.parametrize("metric, statistic", [("TasksFailedByDeadline", "Sum"),
                                               ("OldestInFlightAgeSeconds", "Maximum")])
def test_the_gateways_own_metrics_are_alarmed_as_the_layer_writes_them(template, metric, statistic):
    (alarm,) = watching(template, gateway_namespace(template), metric)
    assert dims(alarm) == {"service": template["Globals"]["Function"]["Environment"]["Variables"][
        "POWERTOOLS_SERVICE_NAME"]}
    assert alarm["Statistic"] == statistic
    assert f'"{metric}"' in (LAYER / "worker.py").read_text(encoding="utf-8")


def test_the_oldest_task_alarm_fires_past_the_deadline_only(template):
    from imagegw.settings import Settings

    (alarm,) = watching(template, gateway_namespace(template), "OldestInFlightAgeSeconds")
    deadline_s = Settings().task_deadline_s
    assert "TASK_DEADLINE_S" not in template["Globals"]["Function"]["Environment"]["Variables"]
    assert deadline_s < alarm["Threshold"] <= deadline_s + 3600
    assert alarm["TreatMissingData"] == "breaching"  # a sweep that stopped running is stuck tasks too


def dashboard_body(template: dict) -> dict:
    """The dashboard's JSON, its ${...} substitutions made as CloudFormation would (placeholders for the values)."""
    (sub,) = [res["Properties"]["DashboardBody"]["Fn::Sub"] for res in template["Resources"].values()
              if res["Type"] == "AWS::CloudWatch::Dashboard"]
    names = set(template["Resources"]) | {"AWS::Region", "AWS::StackName"}

    def resolve(match: re.Match) -> str:
        inner = match.group(1)
        if inner.startswith("!"):
            return "${" + inner[1:]
        assert inner.split(".")[0] in names, inner
        return f"<{inner}>"

    return json.loads(re.sub(r"\$\{([^}]*)\}", resolve, sub))


def dashboard_metrics(body: dict) -> tuple[list[list], list[str]]:
    """(metric arrays, SEARCH expressions) of every metric widget."""
    arrays, searches = [], []
    for widget in body["widgets"]:
        for entry in widget["properties"].get("metrics", []):
            if isinstance(entry[0], dict):
                searches.append(entry[0]["expression"])
            else:
                arrays.append(entry)
    return arrays, searches


def test_the_dashboard_shows_outcomes_providers_fallbacks_and_cold_starts(template):
    body = dashboard_body(template)
    arrays, searches = dashboard_metrics(body)
    namespace = gateway_namespace(template)
    own = {entry[1]: dict(zip(entry[2:-1:2], entry[3:-1:2], strict=True)) for entry in arrays
           if entry[0] == namespace}
    for outcome in ("TasksSucceeded", "TasksFailed", "TasksCancelled", "RouteFallbacks", "ImagesStored",
                    "ImageBytesStored", "OldestInFlightAgeSeconds"):
        assert own[outcome] == {"service": "imagegw"}, outcome
    cold = [dict(zip(e[2:-1:2], e[3:-1:2], strict=True)) for e in arrays if e[1] == "ColdStart"]
    assert sorted(c["function_name"] for c in cold) == sorted(f"<{f}>" for f in FUNCTIONS)
    # per provider (and per provider pair): exactly the dimension sets observability.py writes them with
    expected = {"UpstreamLatency": "provider,service", "UpstreamFailures": "provider,service",
                "UpstreamCheckFailures": "provider,service", "RouteFallbacks": "from_provider,service,to_provider"}
    for metric, dimension_set in expected.items():
        assert any(f"{{{namespace},{dimension_set}}} MetricName=\"{metric}\"" in s for s in searches), metric
    source = (LAYER / "observability.py").read_text(encoding="utf-8")
    for metric in expected:
        assert f'"{metric}"' in source


def test_the_dashboard_shows_every_alarm(template):
    body = dashboard_body(template)
    shown = {a for w in body["widgets"] if w["type"] == "alarm" for a in w["properties"]["alarms"]}
    assert shown == {f"<{name}.Arn>" for name in alarms(template)}
