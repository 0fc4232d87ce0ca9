"""Every knob of the service, read from the environment with the prefix
RAPID_ADAPT_ (pydantic-settings), e.g. RAPID_ADAPT_API_KEYS=acme:s3cret."""

from __future__ import annotations

import base64
import binascii
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.checkpoint import CHECKPOINT_DIR

from . import keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAPID_ADAPT_", env_file=".env", extra="ignore")

    broker_url: str = "redis://127.0.0.1:6379/0"  # Celery's queue: must never evict
    redis_url: str = "redis://127.0.0.1:6379/1"  # adaptations, support sets, idempotency keys, tenant index
    cache_url: str | None = None  # adapted weights, may evict (allkeys-lru); default: redis_url
    redis_timeout_seconds: float = 1.0  # connect/read timeout: Redis down answers 503 quickly
    # files holding each Redis's password (Compose's secrets, /run/secrets/...): read at start and put into
    # the URL above, so that no password is in an environment variable or on a command line
    broker_password_file: str | None = None
    redis_password_file: str | None = None
    cache_password_file: str | None = None
    # on: redis_url (and cache_url) name a node of a Redis Cluster (keys are hash-tagged, app/core/keys.py)
    redis_cluster: Literal["on", "off"] = "off"
    # with a sentinel:// broker_url (Celery's form, ";"-separated sentinels): the master's name
    broker_master_name: str = "mymaster"
    # replicas that must hold a job's `succeeded` before its worker takes the next job (Redis WAIT);
    # 0: acknowledged as soon as the primary has it (docs/operations.md says what each guarantees)
    store_replicas: int = Field(0, ge=0)
    store_replica_wait_ms: int = Field(1000, ge=1)

    auth: Literal["on", "off"] = "on"
    api_keys: str = ""  # "tenant:key,tenant2:key2", keys of at least 24 characters; a tenant may have several
    allow_demo_key: bool = False  # accept the README's `demo-key` (scripts/quickstart.sh sets it, nothing else)
    metrics_key: str = ""  # Bearer key of GET /metrics; unset, /metrics is open only with auth off
    # label per-tenant series of /metrics with the tenant (jobs, quota refusals); off: tenant="all", for
    # deployments with so many tenants that a series each would burden Prometheus
    metrics_tenant_label: bool = True

    models_dir: str = ""  # directories of bases to serve, ":"-separated, "shipped" = the committed ones (default)
    models_poll_seconds: float = 2.0  # how often a directory is looked at again for new or replaced bases

    max_body_bytes: int = 8 * 2**20
    max_support: int = 500  # examples per support set
    max_query: int = 1000  # inputs per prediction request
    max_image_pixels: int = 4_000_000  # decoded pixels per image (decompression bombs)
    max_image_side: int = 8192  # pixels on either side of an image
    max_request_pixels: int = 64_000_000  # decoded pixels of all the images of one request
    body_timeout_seconds: float = 5.0  # a request body that stalls longer is answered 408
    body_deadline_seconds: float = Field(60.0, gt=0)  # a request body not whole this long after it began: 408
    default_ttl_seconds: int = 3600
    max_ttl_seconds: int = 7 * 24 * 3600
    max_metadata_bytes: int = Field(4096, ge=0)  # an adaptation's metadata keys and values, UTF-8, in all
    max_wait_seconds: float = 30.0
    max_stream_seconds: float = Field(
        600.0, gt=0
    )  # an event stream (SSE) ends after this; the client resumes with Last-Event-ID
    # requests of one tenant waiting (?wait=) at once, per API process: one more is answered 429.
    # A wait holds no thread (app/api/notices.py), only a socket and an asyncio event
    max_waits_per_tenant: int = Field(200, ge=1)
    # after SIGTERM an API process answers new requests 503 `draining` this long (its readiness fails, a
    # load balancer takes it out), then finishes those in flight and exits (app/api/drain.py)
    drain_seconds: float = Field(0.0, ge=0)
    list_page_size: int = 20
    list_max_scan: int = Field(1000, ge=101)  # adaptations one listing request reads at most (filters end short)

    # per tenant, each over its limit a 429 naming it
    tenant_max_adaptations: int = 10_000  # adaptations stored
    tenant_max_bytes: int = 256 * 2**20  # support sets and adapted weights stored
    tenant_max_jobs: int = 50  # jobs queued or running
    tenant_predict_images_per_second: int = 2000  # images in prediction requests
    # request bodies in processing at once, per API process: more wait their turn (429 after
    # body_timeout_seconds), so one tenant's large bodies take its share, not the process; 0: no limit
    tenant_inflight_bytes: int = 256 * 2**10
    # workers no one tenant's jobs may fill (while more are alive) while another tenant is active, so an
    # active tenant's job finds a free worker; a lone tenant uses every worker. 0: none (jobs yielding
    # between slices still keep tenants fair)
    tenant_reserved_workers: int = Field(1, ge=0)
    # a tenant is active this long after a job of it was claimed (one that used the service in the last half
    # minute is likely mid-session); 0: always (a hard reservation, held even for a lone tenant)
    tenant_active_seconds: float = Field(30.0, ge=0)
    # the most waiting fast-mode jobs of one batch key (base version, steps, support shape) a worker claims
    # and adapts together (worker/tasks.py): fewer passes and round trips per job, but each job of a batch
    # ends when the batch does; 1: one at a time
    job_batch_max: int = Field(16, ge=1)
    # a running job's slice: this often it looks for other tenants' waiting jobs and runs one first
    # (worker/tasks.py); 0: jobs never yield
    job_slice_seconds: float = Field(0.02, ge=0)
    # CPU priority (a nice value, 0-19) of background work: prediction requests larger than one pass,
    # and jobs of a tenant with more jobs waiting (app/core/priority.py); 0: the same as the rest
    background_nice: int = Field(10, ge=0, le=19)
    store_max_fill: float = 0.9  # of the store Redis's maxmemory: past it, creates answer 507

    lru_size: int = 4096  # adapted weights held in the API process
    predict_max_batch: int = 64  # images per forward pass: larger batches only add memory traffic on CPU
    # per process: the service runs several processes (API, workers) that share the cores, and torch's
    # default (a thread per core in each) oversubscribes them under load (bench/results/flood*.md); 0: torch's default
    torch_threads: int = 1
    # torch threads a prediction pass takes while the rest of the host leaves the cores free (app/core/idle.py):
    # a lone request's pass on two cores instead of one; 1: always torch_threads
    predict_idle_threads: int = Field(2, ge=1)

    # webhooks (app/core/webhooks.py): "tenant:secret,..." signs each tenant's calls (Standard Webhooks; a
    # secret of at least 24 characters, whsec_BASE64 as its libraries make them); a tenant without one
    # cannot ask for a webhook
    webhook_secrets: str = ""
    webhook_allow_private: bool = False  # let webhooks call loopback and private addresses (tests, one host)
    webhook_timeout_seconds: float = Field(5.0, gt=0)  # a receiver that answers slower has failed this attempt
    webhook_max_attempts: int = Field(8, ge=1)  # then the webhook is given up (its state says so)
    webhook_backoff_seconds: float = Field(2.0, gt=0)  # before the 2nd attempt; doubling after each, at most 10 min

    job_max_attempts: int = Field(3, ge=1)  # tries of a job whose run raised or whose worker died; then failed
    job_soft_time_limit: float = 60.0  # a job stops yielding once it has yielded half of this
    job_hard_time_limit: float = 90.0
    visibility_timeout: float = 300.0  # > hard limit: Celery redelivers an unacknowledged ticket after this
    restore_interval_seconds: int = 10  # how often workers look for tickets a dead worker left
    worker_heartbeat_seconds: float = 2.0  # also how often a worker looks for jobs a dead worker held
    sweep_seconds: float = 30.0  # how often one worker drops expired adaptations' ids from the indexes

    @model_validator(mode="after")
    def _passwords_from_files(self) -> Settings:
        for url, file in (("broker_url", "broker_password_file"), ("redis_url", "redis_password_file"),
                          ("cache_url", "cache_password_file")):  # fmt: skip
            path = getattr(self, file)
            if path and getattr(self, url):  # no cache_url: the weights share the store's URL and password
                try:
                    password = Path(path).read_text().strip()
                except OSError as exc:
                    raise ValueError(f"{file}: cannot read {path}: {exc.strerror}") from None
                if not password:
                    raise ValueError(f"{file}: {path} is empty")
                setattr(self, url, with_password(getattr(self, url), password))
        return self

    @field_validator("webhook_secrets")
    @classmethod
    def _secrets_parse(cls, text: str) -> str:
        webhook_secrets(text)
        return text

    @field_validator("metrics_key")
    @classmethod
    def _long_enough(cls, key: str) -> str:
        if key and len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"a key needs at least {MIN_KEY_LENGTH} characters, this one has {len(key)}")
        return key

    def models_dirs(self) -> list[Path]:
        dirs = [CHECKPOINT_DIR if d == "shipped" else Path(d) for d in self.models_dir.split(":") if d]
        return dirs or [CHECKPOINT_DIR]

    @property
    def heartbeat_window(self) -> float:
        """A worker whose last heartbeat is older than this is counted dead."""
        return 3 * self.worker_heartbeat_seconds + 1

    @property
    def weights_url(self) -> str:
        return self.cache_url or self.redis_url

    def tenants_by_key(self) -> dict[bytes, str]:
        """The SHA-256 digest of each API key -> its tenant: the keys themselves are not kept.
        A tenant may have several keys (rotation: add the new, move callers, drop the old). Refused
        at start-up, each naming the tenant and never the key: a key under MIN_KEY_LENGTH characters,
        one key given twice, the example key, and the quick start's demo key unless allow_demo_key."""
        out: dict[bytes, str] = {}
        for pair in (p.strip() for p in self.api_keys.split(",")):
            if not pair:
                continue
            tenant, sep, key = pair.partition(":")
            if not sep or not tenant or not key:
                raise ValueError("RAPID_ADAPT_API_KEYS must be tenant:key pairs separated by commas")
            if not keys.TENANT.fullmatch(tenant):
                raise ValueError(f"RAPID_ADAPT_API_KEYS: tenant {tenant!r} must be 1-64 of A-Z a-z 0-9 _ . -")
            if key in EXAMPLE_KEYS:
                raise ValueError(f"RAPID_ADAPT_API_KEYS holds {key!r}, the example key of .env.example: set your own")
            if key == DEMO_KEY and not self.allow_demo_key:
                raise ValueError(
                    f"RAPID_ADAPT_API_KEYS gives {tenant!r} the quick start's published key {DEMO_KEY!r}: set your own"
                )
            if len(key) < MIN_KEY_LENGTH and key != DEMO_KEY:
                raise ValueError(
                    f"RAPID_ADAPT_API_KEYS: {tenant!r}'s key has {len(key)} characters, at least {MIN_KEY_LENGTH} "
                    "are needed (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
            digest = key_digest(key)
            if digest in out:
                raise ValueError(f"RAPID_ADAPT_API_KEYS gives one key to {out[digest]!r} and {tenant!r}")
            out[digest] = tenant
        return out


def webhook_secrets(text: str) -> dict[str, bytes]:
    """RAPID_ADAPT_WEBHOOK_SECRETS -> tenant: the HMAC key (whsec_BASE64 decoded, as Standard
    Webhooks' libraries read it; any other secret as its UTF-8)."""
    out: dict[str, bytes] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        tenant, sep, secret = pair.partition(":")
        if not sep or not keys.TENANT.fullmatch(tenant) or not secret:
            raise ValueError("RAPID_ADAPT_WEBHOOK_SECRETS must be tenant:secret pairs separated by commas")
        if len(secret) < MIN_KEY_LENGTH:
            raise ValueError(
                f"RAPID_ADAPT_WEBHOOK_SECRETS: {tenant!r}'s secret has {len(secret)} characters, "
                f"at least {MIN_KEY_LENGTH} are needed"
            )
        if tenant in out:
            raise ValueError(f"RAPID_ADAPT_WEBHOOK_SECRETS gives {tenant!r} two secrets")
        if secret.startswith("whsec_"):
            try:
                out[tenant] = base64.b64decode(secret[6:], validate=True)
            except binascii.Error:
                raise ValueError(f"RAPID_ADAPT_WEBHOOK_SECRETS: {tenant!r}'s whsec_ secret is not base64") from None
        else:
            out[tenant] = secret.encode()
    return out


def with_password(url: str, password: str) -> str:
    """`url` (each of Celery's ;-separated sentinel URLs) with `password`, percent-encoded."""
    out = []
    for one in url.split(";"):
        parts = urlsplit(one)
        host = parts.netloc.rpartition("@")[2]
        out.append(urlunsplit(parts._replace(netloc=f":{quote(password, safe='')}@{host}")))
    return ";".join(out)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


EXAMPLE_KEYS = ("change-me",)  # published in .env.example: refused, so a copied example never goes live
DEMO_KEY = "demo-key"  # the quick start's, published in the README: accepted only with ALLOW_DEMO_KEY=on
MIN_KEY_LENGTH = 24


@lru_cache
def get_settings() -> Settings:
    return Settings()
