"""API keys as an operator would want them: long, one tenant each, several per tenant for
rotation, the published ones refused, and only their digests kept in memory."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError

from app.api.deps import tenant_of_key
from app.api.factory import create_app
from app.core.config import MIN_KEY_LENGTH, Settings
from app.demo import sinusoid_task

from .conftest import InProcess, make_settings

OLD, NEW, OTHER = "a" * MIN_KEY_LENGTH, "b" * 40, "c" * 32


def keys(text: str, **kw) -> dict:
    return Settings(_env_file=None, api_keys=text, **kw).tenants_by_key()


def test_short_repeated_example_and_demo_keys_are_refused_naming_the_tenant_never_the_key():
    short = "s" * (MIN_KEY_LENGTH - 1)
    with pytest.raises(ValueError, match=f"'acme''s key has {MIN_KEY_LENGTH - 1} characters") as e:
        keys(f"acme:{short}")
    assert short not in str(e.value)
    with pytest.raises(ValueError, match="one key to 'acme' and 'globex'") as e:
        keys(f"acme:{OLD},globex:{OLD}")
    assert OLD not in str(e.value)
    with pytest.raises(ValueError, match="example key"):
        keys("acme:change-me")
    with pytest.raises(ValueError, match="quick start's published key"):
        keys("demo:demo-key")
    assert list(keys("demo:demo-key", allow_demo_key=True).values()) == ["demo"]
    with pytest.raises(ValidationError, match="metrics_key"):
        Settings(_env_file=None, metrics_key="short")


def test_a_tenant_may_have_several_keys_and_only_their_digests_are_kept():
    tenants = keys(f"acme:{OLD}, acme:{NEW}, globex:{OTHER}")
    assert sorted(tenants.values()) == ["acme", "acme", "globex"]
    assert not any(k in repr(tenants) for k in (OLD, NEW, OTHER))  # digests, not keys
    assert [tenant_of_key(k, tenants) for k in (OLD, NEW, OTHER, "d" * 30)] == ["acme", "acme", "globex", None]


def test_a_rotated_key_reaches_the_same_adaptations_and_a_dropped_one_is_401(redis_server):
    """Rotation: the old and new keys both work while callers move; once the old is dropped
    from API_KEYS it is 401 and the new one still sees everything."""
    redis.Redis(port=redis_server.redis_port).flushall()
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(1)[0]}
    auth = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    with InProcess(create_app(make_settings(redis_server, api_keys=f"acme:{OLD},acme:{NEW}"))) as app:
        aid = app.request("POST", "/v1/adaptations", key=None, json=body, headers=auth(OLD)).json()["id"]
        assert app.request("GET", f"/v1/adaptations/{aid}", key=None, headers=auth(NEW)).status_code == 200
    with InProcess(create_app(make_settings(redis_server, api_keys=f"acme:{NEW}"))) as app:
        assert app.request("GET", f"/v1/adaptations/{aid}", key=None, headers=auth(OLD)).status_code == 401
        assert app.request("GET", f"/v1/adaptations/{aid}", key=None, headers=auth(NEW)).status_code == 200


def test_each_redis_password_comes_from_a_file_and_never_from_a_command_line(tmp_path):
    """A Redis started as Compose starts it (its password from a config file, not argv), reached
    with the password read from the file RAPID_ADAPT_REDIS_PASSWORD_FILE names."""
    import shutil
    import subprocess

    from app.core.store import Store
    from bench.stack import free_port, wait_until

    password = "p@ss/word:" + "x" * 20
    (tmp_path / "store_password").write_text(password + "\n")
    (tmp_path / "redis.conf").write_text(f"requirepass {password}\n")
    port = free_port()
    args = [shutil.which("redis-server"), str(tmp_path / "redis.conf"), "--port", str(port), "--save", ""]
    server = subprocess.Popen([*args, "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        assert not any(password in a for a in server.args)
        url = f"redis://127.0.0.1:{port}/1"
        wait_until(lambda: redis.Redis(port=port, password=password).ping(), 10, "redis")
        store = Store(Settings(_env_file=None, redis_url=url, redis_password_file=str(tmp_path / "store_password")))
        store.ping()
        assert store.r.set("k", "v")
        with pytest.raises(redis.AuthenticationError):
            Store(Settings(_env_file=None, redis_url=url)).r.set("k", "v")
        with pytest.raises(ValidationError, match="redis_password_file: cannot read"):
            Settings(_env_file=None, redis_url=url, redis_password_file=str(tmp_path / "missing"))
    finally:
        server.terminate()
        server.wait(10)
