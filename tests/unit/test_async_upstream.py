"""The async machinery with an upstream that answers with a task id: Pending -> checks -> Done.

The seed async dialects arrive in the next issue; this drives the engine with a minimal one, defined here,
against a loopback upstream that finishes after a few checks.
"""

import pytest

from imagegw import bus, tasks, worker
from imagegw.dialects import REGISTRY, Done, HttpCall, ImageOut, Pending
from imagegw.dialects.base import Dialect
from tests.simulators.loopback import Answer, LoopbackSimulator


class TicketDialect(Dialect):
    name = "ticket-test"

    def build_submit(self, req, route):
        return [HttpCall("POST", route.config.root_url + "/submit", json={"prompt": req.prompt})]

    def parse_submit(self, req, replies):
        return Pending(upstream_id=replies[0].json()["id"])

    def build_check(self, upstream_id, route):
        return HttpCall("GET", route.config.root_url + f"/tasks/{upstream_id}")

    def parse_check(self, reply):
        body = reply.json()
        if body["status"] == "done":
            return Done(images=[ImageOut(url=body["url"])])
        return Pending(upstream_id=body["id"], progress=body["progress"])


class TicketUpstream(LoopbackSimulator):
    """Answers a submit with an id; reports running, then done with an image URL on the third check."""

    checks = 0

    def answer(self, request):
        if request.method == "POST":
            return Answer(200, {"id": "up-1"})
        self.checks += 1
        done = self.checks >= 3
        return Answer(200, {"id": "up-1", "status": "done" if done else "running", "progress": 30 * self.checks,
                            "url": self.file_url(32, 32, "img")})


@pytest.fixture
def ticket_upstream(providers_file, loopback_fetch, monkeypatch):
    with TicketUpstream() as upstream:
        monkeypatch.setitem(REGISTRY, "ticket-test", f"{__name__}:TicketDialect")
        providers_file({"providers": {"t": {"dialect": "ticket-test", "base_url": upstream.base_url,
                                            "api_key": "sk-ticket"}},
                        "models": {"slowpoke": [{"provider": "t"}]}})
        yield upstream


class StoreGenerated:
    """A bus on which "Task Generated" is stored at once (the fetch function's job), in this thread;
    `published` lists the hand-offs (events whose detail is a task id) by detail type."""

    def __init__(self):
        self.published = []

    def send(self, detail_type, details):
        for detail in details:
            if set(detail) == {"task_id"}:
                self.published.append(detail_type)
            if detail_type == bus.TASK_GENERATED:
                worker.store_generated(detail["task_id"])


def test_pending_tasks_are_checked_by_the_sweep_until_done(aws, ticket_upstream, checks_at_once):
    with bus.use(StoreGenerated()) as store:
        task = tasks.create("o", "slowpoke", {"prompt": "p", "model": "slowpoke"})
        waiting = worker.submit_queued(task.id)
        assert waiting.stage == "waiting" and waiting.upstream["id"] == "up-1"

        progress = []
        for _ in range(10):  # the schedule, with nobody polling
            worker.sweep()
            current = tasks.get(task.id)
            progress.append(current.progress)
            if current.terminal:
                break
    assert current.status == "succeeded" and ticket_upstream.checks == 3
    assert progress[0] == 30 and store.published == [bus.TASK_GENERATED]


def test_a_read_polls_through_when_a_check_is_due(aws, ticket_upstream, quiet_bus, fake_clock):
    task = tasks.create("o", "slowpoke", {"prompt": "p", "model": "slowpoke"})
    worker.submit_queued(task.id)
    fake_clock.advance(60_000)  # the check is due
    seen = worker.poll_through(tasks.get(task.id))
    assert ticket_upstream.checks == 1 and seen.progress == 30
