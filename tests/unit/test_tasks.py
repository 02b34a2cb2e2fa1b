"""The task state machine: conditional writes make every step happen once and status only move forward."""

import pytest

from imagegw import clock, tasks
from imagegw.errors import BadRequest, Conflict, NotFound


def new(owner="owner-a", model="gpt-image-1"):
    return tasks.create(owner, model, {"prompt": "a cat", "model": model})


def test_a_new_task_is_queued_and_only_its_owner_sees_it(aws):
    task = new()
    assert task.status == "queued" and task.id.startswith("imgtask_")
    assert tasks.get(task.id, "owner-a").request == {"prompt": "a cat", "model": "gpt-image-1"}
    with pytest.raises(NotFound):
        tasks.get(task.id, "owner-b")
    with pytest.raises(NotFound):
        tasks.get("imgtask_missing", "owner-a")


def test_only_one_worker_can_claim_a_stage(aws):
    task = new()
    first = tasks.claim(task.id, "queued", lease_s=60)
    assert first is not None and first.status == "in_progress"
    assert tasks.claim(task.id, "queued", lease_s=60) is None  # a redelivered event or a second worker
    assert tasks.claim(task.id, "generated", lease_s=60) is None  # not at that stage


def test_an_expired_lease_can_be_taken_over(aws):
    task = new()
    assert tasks.claim(task.id, "queued", lease_s=-1) is not None  # the worker died: lease already past
    again = tasks.claim(task.id, "queued", lease_s=60)
    assert again is not None and again.claims == 2


def test_results_need_the_lease_and_a_live_task(aws):
    task = new()
    claimed = tasks.claim(task.id, "queued", lease_s=60)
    stale = tasks.Task(**{**claimed.__dict__, "lease_id": "someone-else"})
    assert tasks.finish(stale, "succeeded") is None
    done = tasks.finish(claimed, "succeeded", images=[{"index": 0, "key": "images/x/0.png"}])
    assert done.status == "succeeded" and done.progress == 100 and done.completed_at
    # terminal: nothing moves it any more, not even its own lease holder
    assert tasks.finish(claimed, "failed") is None
    assert tasks.claim(task.id, "queued", lease_s=60) is None
    assert tasks.get(task.id).status == "succeeded"


def test_cancel_stops_later_results_and_is_409_once_terminal(aws):
    task = new()
    claimed = tasks.claim(task.id, "queued", lease_s=60)
    assert tasks.cancel(task.id, "owner-a").status == "cancelled"
    assert tasks.advance(claimed, "generated", next_check_at=0) is None  # late upstream answer ignored
    assert tasks.finish(claimed, "succeeded") is None
    with pytest.raises(Conflict):
        tasks.cancel(task.id, "owner-a")
    with pytest.raises(NotFound):
        tasks.cancel(task.id, "owner-b")


def test_live_tasks_are_due_for_the_sweep_and_leave_it_when_done(aws):
    task = tasks.create("o", "m", {"prompt": "p"}, check_after_s=0)
    assert task.id in tasks.due()
    claimed = tasks.claim(task.id, "queued", lease_s=300)
    assert task.id not in tasks.due()  # the lease holder is working on it
    tasks.finish(claimed, "failed", error={"code": "x", "message": "y", "type": "upstream_error"})
    assert task.id not in tasks.due(now=clock.now_ms() + 10**9)


def test_list_is_newest_first_with_a_cursor(aws):
    ids = [new().id for _ in range(5)]
    new(owner="owner-b")
    page, more = tasks.list_for("owner-a", limit=2)
    assert [t.id for t in page] == ids[::-1][:2] and more
    page2, more2 = tasks.list_for("owner-a", limit=10, after=page[-1].id)
    assert [t.id for t in page2] == ids[::-1][2:] and not more2
    with pytest.raises(BadRequest):
        tasks.list_for("owner-a", after="imgtask_nope")
