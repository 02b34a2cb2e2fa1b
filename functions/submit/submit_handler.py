"""submit: `POST /v1/images/generations`, `GET /v1/models`, the API docs, and two bus events.

HTTP requests go to the shared API; "Task Queued" sends a task to its upstream; "Image Generation
Requested" (another application asking over the bus) creates a task and sends it; an S3 object created
under batches/ starts a batch job, and "Batch Continue" carries it on (reading or writing its results).

Each kind of event imports its own code path when it first comes (imagegw.entry): a cold start pays for
the path of the event that woke it.
"""

from aws_lambda_powertools import Logger

from imagegw import entry

logger = Logger()
#: the modules of this function's code paths (imported at init only for SnapStart / provisioned concurrency)
CODE_PATHS = ("imagegw.api", "imagegw.batches.jobs", "imagegw.intake", "imagegw.worker")
entry.preload(*CODE_PATHS)


@entry.lambda_handler(logger)
def lambda_handler(event: dict, context) -> dict | None:
    if "httpMethod" in event:
        api = entry.load("imagegw.api")
        return api.handle(event, context)
    batch_jobs = entry.load("imagegw.batches.jobs")
    if batch_jobs.is_s3_event(event):
        batch_jobs.on_s3_event(event, context)
        return None
    detail_type = event["detail-type"]  # an EventBridge event
    if detail_type == batch_jobs.BATCH_CONTINUE:
        batch_jobs.on_continue(event, context)
        return None
    bus = entry.load("imagegw.bus")
    if detail_type == bus.GENERATION_REQUESTED:
        intake = entry.load("imagegw.intake")
        intake.accept(event)
        return None
    detail = event["detail"]
    logger.append_keys(task_id=detail["task_id"])
    worker = entry.load("imagegw.worker")
    worker.submit_queued(detail["task_id"], woken_by=detail.get("woken_by"), slot=detail.get("slot"))
    return None
