"""fetch: the image redirect route and two bus events.

"Task Generated" downloads the upstream image URLs (SSRF-guarded, streamed) into the image bucket and
completes the task; "Webhook Due" makes one signed delivery attempt of a finished task's webhook.

Each kind of event imports its own code path when it first comes (imagegw.entry).
"""

from aws_lambda_powertools import Logger

from imagegw import entry

logger = Logger()
#: the modules of this function's code paths (imported at init only for SnapStart / provisioned concurrency)
CODE_PATHS = ("imagegw.api", "imagegw.webhooks", "imagegw.worker")
entry.preload(*CODE_PATHS)


@entry.lambda_handler(logger)
def lambda_handler(event: dict, context) -> dict | None:
    if "httpMethod" in event:
        api = entry.load("imagegw.api")
        return api.handle(event, context)
    detail_type, detail = event["detail-type"], event["detail"]  # an EventBridge event
    task_id = detail["task_id"]
    logger.append_keys(task_id=task_id)
    bus = entry.load("imagegw.bus")
    if detail_type == bus.WEBHOOK_DUE:
        webhooks = entry.load("imagegw.webhooks")
        webhooks.deliver_due(task_id)
    else:
        worker = entry.load("imagegw.worker")
        worker.store_generated(task_id)
    return None
