"""The owner index: the event tenant's tasks spread over several owner keys (no hot partition), while an API key
lists its tasks, newest first and paginated, with one query as before."""

from __future__ import annotations

from collections import Counter

from imagegw import clock, settings, shards, table, tasks
from tests.conftest import ROOT


def create(owner: str, count: int, **fields) -> list[str]:
    ids = []
    for i in range(count):
        ids.append(tasks.create(owner, "gpt-image-1", {"prompt": f"p{i}"}, **fields).id)
        clock_ms = clock.now_ms()
        while clock.now_ms() == clock_ms:  # distinct creation times: ids order as creation does
            pass
    return ids


def test_event_tenant_tasks_spread_over_owner_keys_and_others_keep_one(aws):
    tenant = settings.current().event_tenant
    events = create(tenant, 48)
    spread = Counter(table.get(i)["owner_key"] for i in events)
    assert len(spread) >= 10 and max(spread.values()) <= 12  # 48 over 16 keys: no key holds most of them
    assert set(spread) <= {f"{tenant}#{k}" for k in range(shards.OWNER_SHARDS)}
    [mine] = create("owner-a", 1)
    assert table.get(mine)["owner_key"] == "owner-a"


def test_the_event_tenant_lists_its_tasks_newest_first_across_keys_page_by_page(aws):
    tenant = settings.current().event_tenant
    ids = create(tenant, 23)
    create("owner-a", 3)
    seen, after, more = [], None, True
    while more:
        page, more = tasks.list_for(tenant, limit=5, after=after)
        assert len(page) <= 5
        seen += [t.id for t in page]
        after = page[-1].id if page else None
    assert seen == sorted(ids, reverse=True)


def test_an_api_key_lists_as_before(aws):
    mine = create("owner-a", 7)
    create(settings.current().event_tenant, 5)
    page, more = tasks.list_for("owner-a", limit=4)
    assert [t.id for t in page] == sorted(mine, reverse=True)[:4] and more
    rest, more = tasks.list_for("owner-a", limit=4, after=page[-1].id)
    assert [t.id for t in rest] == sorted(mine, reverse=True)[4:] and not more


def test_find_recent_finds_the_event_tenants_task_in_whichever_key_it_is(aws):
    tenant = settings.current().event_tenant
    since = clock.now_ms()
    ids = create(tenant, 20, request_hash="h-other")
    wanted = tasks.create(tenant, "gpt-image-1", {"prompt": "x"}, request_hash="h-wanted").id
    assert tasks.find_recent(tenant, "h-wanted", since_ms=since).id == wanted
    assert tasks.find_recent(tenant, "h-none", since_ms=since) is None
    assert tasks.find_recent(tenant, "h-other", since_ms=since).id == max(ids)


def test_the_template_keeps_the_former_owner_index_only_while_a_stack_upgrades():
    from local.template import load

    def indexes(keep: str) -> tuple[list[str], list[str]]:
        props = load(ROOT, parameter_overrides={"KeepOwnerIndex": keep}).tables["TaskTable"]
        return ([i["IndexName"] for i in props["GlobalSecondaryIndexes"]],
                [a["AttributeName"] for a in props["AttributeDefinitions"]])

    assert indexes("false") == (["owner-key-index", "sweep-index"], ["id", "owner_key", "sweep", "next_check_at"])
    assert indexes("true") == (["owner-key-index", "owner-index", "sweep-index"],
                               ["id", "owner", "owner_key", "sweep", "next_check_at"])


def test_the_backfill_gives_tasks_of_before_owner_keys_their_key(aws):
    from scripts.backfill_owner_key import backfill

    tenant = settings.current().event_tenant
    ids = create(tenant, 6) + create("owner-a", 2)
    for i in ids:  # as written before owner_key existed
        table.task_table().update_item(Key={"id": i}, UpdateExpression="REMOVE owner_key")
    assert tasks.list_for("owner-a")[0] == []
    assert backfill(table.task_table()) == 8
    assert backfill(table.task_table()) == 0
    assert [t.id for t in tasks.list_for(tenant, limit=10)[0]] == sorted(ids[:6], reverse=True)
    assert [t.id for t in tasks.list_for("owner-a")[0]] == sorted(ids[6:], reverse=True)
