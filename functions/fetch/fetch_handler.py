"""fetch: the image redirect route and two bus events.

"Task Generated" downloads the upstream image URLs (SSRF-guarded, streamed) into the image bucket and
completes the task; "Webhook Due" makes one signed delivery attempt of a finished task's webhook.
"""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

from imagegw import api, bus, correlation, observability, webhooks, worker

logger = Logger()
tracer = Tracer()


@logger.inject_lambda_context(clear_state=True, correlation_id_path=correlation.PATH)
@tracer.capture_lambda_handler
@observability.log_metrics
@worker.lambda_time_bound
@correlation.bound
def lambda_handler(event: dict, context) -> dict | None:
    if "httpMethod" in event:
        return api.handle(event, context)
    bus_event = EventBridgeEvent(event)
    task_id = bus_event.detail["task_id"]
    logger.append_keys(task_id=task_id)
    if bus_event.detail_type == bus.WEBHOOK_DUE:
        webhooks.deliver_due(task_id)
    else:
        worker.store_generated(task_id)
    return None
