"""fetch: the image redirect route and the bus event "Task Generated".

"Task Generated" downloads the upstream image URLs (SSRF-guarded, streamed) into the image bucket and
completes the task.
"""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

from imagegw import api, worker

logger = Logger()
tracer = Tracer()


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@worker.metrics.log_metrics
def lambda_handler(event: dict, context) -> dict | None:
    if "httpMethod" in event:
        return api.handle(event, context)
    task_id = EventBridgeEvent(event).detail["task_id"]
    logger.append_keys(task_id=task_id)
    worker.store_generated(task_id)
    return None
