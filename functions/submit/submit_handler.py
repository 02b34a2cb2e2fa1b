"""submit: `POST /v1/images/generations`, `GET /v1/models`, the API docs, and two bus events.

HTTP requests go to the shared API; "Task Queued" sends a task to its upstream; "Image Generation
Requested" (another application asking over the bus) creates a task and sends it; an S3 object created
under batches/ starts a batch job, and "Batch Continue" carries it on (reading or writing its results).
"""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

from imagegw import api, bus, correlation, intake, observability, worker
from imagegw.batches import jobs as batch_jobs

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
    if batch_jobs.is_s3_event(event):
        batch_jobs.on_s3_event(event, context)
        return None
    bus_event = EventBridgeEvent(event)
    if bus_event.detail_type == batch_jobs.BATCH_CONTINUE:
        batch_jobs.on_continue(event, context)
        return None
    if bus_event.detail_type == bus.GENERATION_REQUESTED:
        intake.accept(event)
        return None
    logger.append_keys(task_id=bus_event.detail["task_id"])
    detail = bus_event.detail
    worker.submit_queued(detail["task_id"], woken_by=detail.get("woken_by"), slot=detail.get("slot"))
    return None
