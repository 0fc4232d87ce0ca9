"""An upgrade loses nothing: a store in the key layout of earlier versions (no hash tags) is
moved to this one's when the API starts, and serves as before."""

from __future__ import annotations

import redis

from app.api.factory import create_app
from app.core import keys
from app.demo import sinusoid_task

from .conftest import InProcess, run_next_job


def as_layout_3(r: redis.Redis, tenant: str, ids: list[str]) -> None:
    """The support set and events in keys of their own, as versions 1.1 and 1.2 kept them."""
    for aid in ids:
        record, ttl = keys.record(tenant, aid), r.ttl(keys.record(tenant, aid))
        r.set(f"ra:{{{tenant}}}:s:{aid}", r.hget(record, "_support"), ex=ttl)
        r.rpush(f"ra:{{{tenant}}}:e:{aid}", *r.hget(record, "_events").split(b"\n"))
        r.expire(f"ra:{{{tenant}}}:e:{aid}", ttl)
        r.hdel(record, "_support", "_events")
        r.hset(record, "held_bytes", "1000")
    for aid, held in r.hgetall(keys.flights(tenant)).items():  # one hash of flights, a set of ids per tenant
        r.hset("ra:{q}:inflight", aid, held)
        r.sadd(f"ra:{{q}}:run:{tenant}", aid)
    r.delete(keys.flights(tenant), keys.FLYING)
    r.sadd(f"ra:{{{tenant}}}:j", *ids)
    r.set(keys.SCHEMA_KEY, 3)


def as_layout_1(r: redis.Redis, tenant: str, ids: list[str]) -> None:
    """The keys as versions before 0.9 named them (written out here, not derived from keys.py)."""
    as_layout_3(r, tenant, ids)
    for aid in ids:
        r.rename(keys.record(tenant, aid), f"ra:a:{aid}")
        r.rename(f"ra:{{{tenant}}}:s:{aid}", f"ra:s:{aid}")
        r.rename(f"ra:{{{tenant}}}:e:{aid}", f"ra:e:{aid}")
    for new, old in (
        (keys.tenant_index(tenant), f"ra:t:{tenant}"),
        (keys.expiries(tenant), f"ra:x:{tenant}"),
        (keys.usage(tenant), f"ra:b:{tenant}"),
        (f"ra:{{{tenant}}}:j", f"ra:j:{tenant}"),
        (keys.pending(tenant), f"ra:p:{tenant}"),
        (keys.ROTATION, "ra:rr"),
    ):
        r.rename(new, old)
    r.delete(keys.SCHEMA_KEY, keys.usage_total(tenant))


def test_a_store_of_the_old_layout_is_moved_and_serves_as_before(settings):
    support, queries, _ = sinusoid_task(3)
    body = {"model": "sinusoid-mlp", "support": support}
    with InProcess(create_app(settings)) as api:
        done = api.request("POST", "/v1/adaptations", json=body).json()["id"]
        run_next_job(settings)
        before = api.request("POST", f"/v1/adaptations/{done}/predictions", json={"inputs": queries[:3]}).json()
        waiting = api.request("POST", "/v1/adaptations", json=body, headers={"Idempotency-Key": "k1"}).json()["id"]
        r = api.app.state.store.r
        r.delete(keys.weights(done))
        as_layout_1(r, "acme", [done, waiting])
        assert api.request("GET", f"/v1/adaptations/{done}").status_code == 404  # this version cannot see them
    with InProcess(create_app(settings)) as api:  # the next start moves them
        assert not r.keys("ra:a:*") and not r.keys("ra:t:*") and int(r.get(keys.SCHEMA_KEY)) == keys.SCHEMA
        assert int(r.get(keys.usage_total("acme"))) == sum(
            b for _, b in r.zrange(keys.usage("acme"), 0, -1, withscores=True)
        )
        listed = [a["id"] for a in api.request("GET", "/v1/adaptations").json()["data"]]
        assert listed == [waiting, done]
        again = api.request("POST", f"/v1/adaptations/{done}/predictions", json={"inputs": queries[:3]}).json()
        assert again["predictions"] == before["predictions"]  # rebuilt from the moved support set
        retry = api.request("POST", "/v1/adaptations", json=body, headers={"Idempotency-Key": "k1"})
        assert retry.json()["id"] == waiting  # the idempotency key moved with its record
        assert run_next_job(settings) == "succeeded"  # the job in line is still in line
        assert api.request("GET", f"/v1/adaptations/{waiting}").json()["status"] == "succeeded"
        assert api.app.state.store.migrate() == 0  # once moved, a start costs one GET


def test_adaptations_stored_before_metadata_indexes_are_found_by_a_filter_after_the_upgrade(settings):
    """Layout 2 kept no metadata indexes: the next start adds every stored adaptation to those
    of its pairs, so a filtered listing finds it (and nothing else)."""
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(3)[0]}
    with InProcess(create_app(settings)) as api:
        tagged = [
            api.request("POST", "/v1/adaptations", json=body | {"metadata": {"team": "a", "n": str(i)}}).json()["id"]
            for i in range(3)
        ]
        other = api.request("POST", "/v1/adaptations", json=body | {"metadata": {"team": "b"}}).json()["id"]
        r = api.app.state.store.r
        r.delete(*r.keys("ra:{acme}:m:*"))  # as layout 2 left them: no metadata index
        r.set(keys.SCHEMA_KEY, 2)
        assert api.request("GET", "/v1/adaptations", params={"metadata[team]": "a"}).json()["data"] == []
    with InProcess(create_app(settings)) as api:
        found = api.request("GET", "/v1/adaptations", params={"metadata[team]": "a"}).json()
        assert [a["id"] for a in found["data"]] == tagged[::-1] and not found["has_more"]
        one = api.request("GET", "/v1/adaptations", params={"metadata[team]": "a", "metadata[n]": "1"}).json()
        assert [a["id"] for a in one["data"]] == [tagged[1]]
        assert [
            a["id"] for a in api.request("GET", "/v1/adaptations", params={"metadata[team]": "b"}).json()["data"]
        ] == [other]
        assert 0 < r.ttl(keys.metadata_index("acme", "team", "a")) <= 3600


def test_support_sets_and_events_in_keys_of_their_own_move_into_their_records(settings):
    """Layout 3 kept each support set and event list in a key of its own: the next start folds
    them into the record (one key, one TTL), and everything reads and runs as before."""
    support, queries, _ = sinusoid_task(4)
    body = {"model": "sinusoid-mlp", "support": support}
    with InProcess(create_app(settings)) as api:
        done = api.request("POST", "/v1/adaptations", json=body).json()["id"]
        run_next_job(settings)
        flying = api.request("POST", "/v1/adaptations", json=body).json()["id"]
        api.app.state.jobs.claim("w-old")  # a worker holds it
        waiting = api.request("POST", "/v1/adaptations", json=body).json()["id"]
        events = api.request("GET", f"/v1/adaptations/{done}/events").json()["data"]
        r = api.app.state.store.r
        r.delete(keys.weights(done))
        as_layout_3(r, "acme", [done, flying, waiting])
    with InProcess(create_app(settings)) as api:
        assert not r.keys("ra:{acme}:s:*") and not r.keys("ra:{acme}:e:*") and not r.keys("ra:{q}:run:*")
        assert not r.exists("ra:{q}:inflight", "ra:{acme}:j")
        assert api.app.state.jobs.scheduler.flying()["acme"][flying]["worker"] == "w-old"
        assert api.request("DELETE", f"/v1/adaptations/{flying}").status_code == 204
        assert api.app.state.jobs.scheduler.flying() == {"acme": {}}  # out of flight with it
        assert not r.hexists(keys.record("acme", done), "held_bytes")
        assert 0 < r.ttl(keys.record("acme", done)) <= 3600
        assert api.request("GET", f"/v1/adaptations/{done}/events").json()["data"] == events
        answer = api.request("POST", f"/v1/adaptations/{done}/predictions", json={"inputs": queries[:3]})
        assert answer.status_code == 200  # its weights rebuilt from the folded support set
        assert run_next_job(settings) == "succeeded"
        kinds = [e["type"] for e in api.request("GET", f"/v1/adaptations/{waiting}/events").json()["data"]]
        assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "succeeded"
