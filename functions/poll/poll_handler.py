"""poll: the task routes (get with poll-through, list, cancel), the checks of async upstreams scheduled per task,
and the schedule that sweeps live tasks.

A task waiting on an async upstream is checked when its check is due: the check queue (SQS, with the delay)
hands its id here (`checks`, `sweeper.run_checks`). The sweep re-publishes events that were lost, checks async
upstreams that are due (a check whose message was lost too), and fails tasks past their deadline; a client that
never polls still sees its task finish. With several sweep shards the schedule's invocation publishes a "Sweep
Shard" event per shard, and each comes back here (`sweeper`).

Each kind of event imports its own code path when it first comes (imagegw.entry).
"""

from aws_lambda_powertools import Logger

from imagegw import entry

logger = Logger()
#: the modules of this function's code paths (imported at init only for SnapStart / provisioned concurrency)
CODE_PATHS = ("imagegw.api", "imagegw.sweeper")
entry.preload(*CODE_PATHS)


@entry.lambda_handler(logger)
def lambda_handler(event: dict, context) -> dict | None:
    if "httpMethod" in event:
        api = entry.load("imagegw.api")
        return api.handle(event, context)
    sweeper = entry.load("imagegw.sweeper")
    counts = sweeper.handle(event, context)
    if any(counts.values()):
        logger.info("sweep", extra=counts)
    return counts
