"""The embedded AWS: a moto server on loopback, with the template's tables, bucket and bus created in it.

Handlers reach it through boto3 alone (AWS_ENDPOINT_URL), exactly as they reach AWS when deployed. The
resources are built from the template's own properties, so a key schema or index change in template.yaml
is what runs locally.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any
from urllib.request import Request, urlopen

import boto3
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from .template import ACCOUNT_ID, LocalTemplate

log = logging.getLogger(__name__)

# The parts of AWS::DynamoDB::Table's Properties that CreateTable takes as they are.
_TABLE_KEYS = ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "LocalSecondaryIndexes",
               "BillingMode", "ProvisionedThroughput", "TableClass")


class MotoServer:
    """moto's threaded server bound to 127.0.0.1 (never a public interface)."""

    def __init__(self, port: int):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per boto3 call is noise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.port = port

    def start(self) -> str:
        if self.port:
            _check_port_free(self.port)  # moto's thread would die on a taken port and start() wait forever
        self._server.start()
        self.port = self._server.get_host_and_port()[1]  # port 0 -> the one the OS picked
        # Backends are process-global in moto: a stack started again in this process starts empty.
        urlopen(Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).close()
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()
        inner = getattr(self._server, "_server", None)
        if inner is not None:
            inner.server_close()  # release the port at once


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise OSError(f"AWS_PORT {port} on 127.0.0.1 is taken ({exc.strerror}); set AWS_PORT") from None


def clients() -> dict[str, Any]:
    """boto3 clients on the default session, which the handlers share.

    Creating them here, in one thread, also initialises that session before handlers run in many threads
    (boto3's default session is not safe to initialise concurrently).
    """
    return {name: boto3.client(name) for name in ("dynamodb", "s3", "events", "sqs")}


def create_resources(tpl: LocalTemplate, aws: dict[str, Any]) -> None:
    for logical, props in tpl.tables.items():
        create_table(aws["dynamodb"], tpl.physical_names[logical], props)
    for logical, props in tpl.buckets.items():
        _create_bucket(aws["s3"], tpl.physical_names[logical], props, tpl.region)
    for logical, props in tpl.queues.items():
        attributes = {k: str(props[k]) for k in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds")
                      if k in props}
        aws["sqs"].create_queue(QueueName=tpl.physical_names[logical], Attributes=attributes)
        log.info("queue %s", tpl.physical_names[logical])
    for logical in tpl.buses:
        name = tpl.physical_names[logical]
        if name != "default":
            aws["events"].create_event_bus(Name=name)
            log.info("event bus %s", name)


def create_table(ddb: Any, name: str, props: dict[str, Any]) -> None:
    params: dict[str, Any] = {k: props[k] for k in _TABLE_KEYS if k in props}
    stream = props.get("StreamSpecification")
    if stream:
        params["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    for index in params.get("GlobalSecondaryIndexes", []):
        index.pop("ContributorInsightsSpecification", None)  # CloudFormation-only
    ddb.create_table(TableName=name, **params)
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
            "AttributeName": ttl["AttributeName"], "Enabled": True})
    log.info("table %s", name)


def _create_bucket(s3: Any, name: str, props: dict[str, Any], region: str) -> None:
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    if "PublicAccessBlockConfiguration" in props:
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
    encryption = props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration")
    if encryption:
        # CloudFormation's ServerSideEncryptionByDefault is the API's ApplyServerSideEncryptionByDefault.
        rules = [{("ApplyServerSideEncryptionByDefault" if k == "ServerSideEncryptionByDefault" else k): v
                  for k, v in rule.items()} for rule in encryption]
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
    if (props.get("NotificationConfiguration") or {}).get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
        # S3 -> EventBridge: moto then sends "Object Created" to the buses, where the template's rules match.
        s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={
            "EventBridgeConfiguration": {}})
    # Not emulated: lifecycle expiry (moto never expires objects) and the bucket policy (it denies plain
    # HTTP, which is all a loopback endpoint speaks; moto does not enforce policies anyway).
    log.info("bucket %s", name)


def create_queue(sqs: Any, name: str, *, visibility_timeout_s: int) -> tuple[str, str]:
    """An SQS queue for one event source; returns (url, arn)."""
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(visibility_timeout_s),
                                                       "MessageRetentionPeriod": "3600"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def put_rule_to_queue(events: Any, *, rule_name: str, bus_name: str, pattern: dict[str, Any],
                      queue_arn: str) -> str:
    """An EventBridge rule with the template's pattern whose one target is the queue; returns its ARN."""
    try:
        arn = events.put_rule(Name=rule_name, EventBusName=bus_name, EventPattern=json.dumps(pattern),
                              State="ENABLED")["RuleArn"]
    except ClientError as exc:
        raise RuntimeError(f"EventBridge refused the pattern of rule {rule_name}: {exc}") from exc
    events.put_targets(Rule=rule_name, EventBusName=bus_name, Targets=[{"Id": "local-delivery", "Arn": queue_arn}])
    return arn


def rule_arn(region: str, bus_name: str, rule_name: str) -> str:
    prefix = f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/"
    return prefix + (rule_name if bus_name == "default" else f"{bus_name}/{rule_name}")
