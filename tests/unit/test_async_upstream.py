"""The async machinery with an upstream that answers with a task id: Pending -> checks -> Done.

The seed async dialects arrive in the next issue; this drives the engine with a minimal one, defined here,
against a loopback upstream that finishes after a few checks.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagegw import bus, tasks, worker
from imagegw.dialects import DIALECTS, Done, HttpCall, ImageOut, Pending
from imagegw.dialects.base import Dialect
from tests.simulators.openai_sim import png_bytes


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


@pytest.fixture
def ticket_upstream(providers_file, loopback_fetch, monkeypatch):
    checks = {"count": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, body):
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._json({"id": "up-1"})

        def do_GET(self):
            if self.path.startswith("/img"):
                raw = png_bytes(32, 32)
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                return
            checks["count"] += 1
            done = checks["count"] >= 3
            self._json({"id": "up-1", "status": "done" if done else "running", "progress": 30 * checks["count"],
                        "url": f"http://127.0.0.1:{server.server_address[1]}/img.png"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setitem(DIALECTS, "ticket-test", TicketDialect())
    providers_file({"providers": {"t": {"dialect": "ticket-test", "base_url": f"http://127.0.0.1:{server.server_address[1]}"}},
                    "models": {"slowpoke": [{"provider": "t"}]}})
    yield checks
    server.shutdown()
    server.server_close()


def test_pending_tasks_are_checked_by_the_sweep_until_done(aws, ticket_upstream, monkeypatch):
    published = []
    monkeypatch.setattr(bus, "publish", lambda kind, task_id: published.append(kind) or
                        (worker.store_generated(task_id) if kind == bus.TASK_GENERATED else None))
    monkeypatch.setattr(worker, "_check_delay_ms", lambda task: 0)  # checks due at once, for the test
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
    assert current.status == "succeeded" and ticket_upstream["count"] == 3
    assert progress[0] == 30 and published == [bus.TASK_GENERATED]


def test_a_read_polls_through_when_a_check_is_due(aws, ticket_upstream, monkeypatch):
    monkeypatch.setattr(bus, "publish", lambda kind, task_id: None)
    task = tasks.create("o", "slowpoke", {"prompt": "p", "model": "slowpoke"})
    worker.submit_queued(task.id)
    monkeypatch.setattr(worker, "now_ms", lambda: tasks.now_ms() + 60_000)  # the check is due
    seen = worker.poll_through(tasks.get(task.id))
    assert ticket_upstream["count"] == 1 and seen.progress == 30
