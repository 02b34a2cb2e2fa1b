"""Advancing tasks through a real (loopback) openai-dialect upstream, S3 and DynamoDB under moto."""

import pytest

from imagegw import bus, tasks, worker
from tests.conftest import s3_objects
from tests.simulators.openai_sim import Behaviour, OpenAISimulator


@pytest.fixture
def published(quiet_bus):
    """The hand-offs the worker publishes, as (detail type, task id) (EventBridge delivery is the local
    stack's job)."""
    return quiet_bus.hand_offs


def config_for(*sims, model="dall-e-3"):
    providers = {f"p{i}": {"dialect": "openai", "base_url": sim.base_url + "/v1", "api_key": sim.api_key}
                 for i, sim in enumerate(sims)}
    return {"providers": providers, "models": {model: [{"provider": name} for name in providers]}}


def queued(model="dall-e-3", **request):
    return tasks.create("owner", model, {"model": model, "prompt": "a red fox", **request})


def test_url_images_are_generated_then_fetched_once(aws, providers_file, loopback_fetch, published):
    with OpenAISimulator() as sim:
        providers_file(config_for(sim))
        task = queued(n=2, size="1792x1024")
        generated = worker.submit_queued(task.id)
        assert generated.stage == "generated" and published == [(bus.TASK_GENERATED, task.id)]
        assert len(sim.generations) == 2  # dall-e-3 takes n=1: fanned out
        assert all(r.body["n"] == 1 for r in sim.generations)

        assert worker.submit_queued(task.id) is None  # "Task Queued" redelivered: no second upstream call
        assert len(sim.generations) == 2

        done = worker.store_generated(task.id)
        assert done.status == "succeeded" and done.progress == 100
        assert [i["key"] for i in done.images] == [f"images/{task.id}/0.png", f"images/{task.id}/1.png"]
        assert done.images[0]["revised_prompt"].startswith("A detailed rendering")
        assert sim.image_downloads == 2

        assert worker.store_generated(task.id) is None  # "Task Generated" redelivered: nothing stored twice
        assert sim.image_downloads == 2
        assert s3_objects() == [f"images/{task.id}/0.png", f"images/{task.id}/1.png"]


def test_b64_images_are_stored_by_the_submitting_worker(aws, providers_file, published):
    with OpenAISimulator() as sim:
        providers_file(config_for(sim, model="gpt-image-1"))
        task = queued(model="gpt-image-1", n=2, quality="high", response_format="b64_json")
        done = worker.submit_queued(task.id)
        assert done.status == "succeeded" and published == []
        assert "response_format" not in sim.generations[0].body  # never sent to gpt-image models
        assert sim.generations[0].body["quality"] == "high"
        assert done.usage == {"images": 2, "input_tokens": 12, "output_tokens": 8320, "total_tokens": 8332}
        assert len(s3_objects()) == 2


def test_fallback_to_the_next_route_when_the_first_keeps_failing(aws, providers_file, loopback_fetch, published):
    with OpenAISimulator(behaviour=Behaviour(failures=[503, 503, 503])) as bad, OpenAISimulator() as good:
        providers_file(config_for(bad, good))
        task = queued()
        moved = worker.submit_queued(task.id)
        assert moved.stage == "generated" and moved.upstream["provider"] == "p1"
        assert len(bad.generations) == 3 and len(good.generations) == 1  # 1 try + 2 retries, then fallback


def test_a_request_error_is_answered_at_once_without_fallback(aws, providers_file, published):
    with OpenAISimulator() as first, OpenAISimulator() as second:
        providers_file(config_for(first, second))
        task = queued(prompt="break the content policy please")
        failed = worker.submit_queued(task.id)
        assert failed.status == "failed" and failed.error["code"] == "content_policy_violation"
        assert len(first.generations) == 1 and second.generations == []


def test_rejected_credentials_fail_clearly_without_echoing_the_key(aws, providers_file, published):
    with OpenAISimulator(api_key="sk-right") as sim:
        config = config_for(sim)
        config["providers"]["p0"]["api_key"] = "sk-wrong-secret"
        providers_file(config)
        failed = worker.submit_queued(queued().id)
        assert failed.status == "failed" and failed.error["code"] == "provider_auth_failed"
        assert "sk-wrong-secret" not in str(failed.error)


def test_a_cancelled_task_drops_the_late_upstream_answer(aws, providers_file, published, monkeypatch):
    with OpenAISimulator() as sim:
        providers_file(config_for(sim, model="gpt-image-1"))
        task = queued(model="gpt-image-1")
        real_submit = worker.get_dialect("openai").submit

        def cancel_meanwhile(*args, **kwargs):
            outcome = real_submit(*args, **kwargs)
            tasks.cancel(task.id, "owner")
            return outcome

        monkeypatch.setattr(worker.get_dialect("openai"), "submit", cancel_meanwhile)
        assert worker.submit_queued(task.id) is None
        assert tasks.get(task.id).status == "cancelled"


def test_the_sweep_republishes_lost_events_and_gives_up_on_dead_workers(aws, providers_file, published):
    lost = tasks.create("owner", "gpt-image-1", {"prompt": "p"}, check_after_s=0)
    counts = worker.sweep()
    assert counts["republished"] == 1 and published == [(bus.TASK_QUEUED, lost.id)]
    assert worker.sweep()["republished"] == 0  # not due again until REPUBLISH_AFTER_S

    stuck = tasks.create("owner", "gpt-image-1", {"prompt": "p"}, check_after_s=0)
    for _ in range(worker.MAX_CLAIMS):
        tasks.claim(stuck.id, "queued", lease_s=-1)  # a worker took it and died, three times
    worker.sweep()
    assert tasks.get(stuck.id).status == "failed"
