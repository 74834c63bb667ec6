"""Where shared state lives: in memory for one proxy, in Redis for several behind a load balancer.

Both stores offer the same two operations on a pydantic model kept under a key: read it, or apply
a pure function to it atomically. Redis uses optimistic transactions, so the rules themselves are
written once, in Python, and several proxies can never interleave an update: the change is
computed on the value this proxy last saw and written by a compare-and-set script (one round trip,
EVALSHA) that only stores it if Redis still holds that value; if another proxy got there first, the
script answers with the value it holds and the change is recomputed on that (bounded retries).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from glm_saver.settings import ConfigError, GlmSaverSettings

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")

REDIS_KEY_PREFIX = "glm_saver:"
# Shared state outlives a day's rate-limit window, not much more.
REDIS_TTL_SECONDS = 2 * 24 * 3600
# How long a change to SQLite-backed state may wait in memory before it is written.
FLUSH_SECONDS = 1.0
# A Redis that does not answer within this must not hold a request up: money decisions go local.
REDIS_TIMEOUT_SECONDS = 2.0
# Optimistic transactions retried this often before the update is given up as unavailable.
MAX_WATCH_RETRIES = 50

# KEYS[1]: the key; ARGV: the value expected ("" for none), the new value, the TTL. Stores the new
# value only if the key still holds the expected one; else answers with what it holds.
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1]) or ''
if current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return {1, ''}
end
return {0, current}
"""


class StoreUnavailable(RuntimeError):
    """The shared state cannot be read or written (Redis down or too slow)."""


class StoreHealth:
    """Whether the store answered its last operation, for /health (one per process)."""

    def __init__(self) -> None:
        self.ok = True
        self.error: str | None = None
        self.since = time.time()

    def record(self, ok: bool, error: str | None = None) -> None:
        if ok != self.ok:
            self.since = time.time()
        self.ok, self.error = ok, error

    def describe(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "ok": self.ok, "error": self.error, "since": round(self.since, 3)}


STORE_HEALTH = StoreHealth()


class Store(Protocol, Generic[M]):
    async def read(self, key: str) -> M: ...

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R: ...


class MemoryStore(Generic[M]):
    def __init__(self, model: type[M]) -> None:
        self._model = model
        self._values: dict[str, M] = {}
        self._lock = threading.Lock()  # log events may run on LiteLLM's worker threads

    async def read(self, key: str) -> M:
        with self._lock:
            return self._values.get(key) or self._model()

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        with self._lock:
            value, result = change(self._values.get(key) or self._model())
            self._values[key] = value
            return result


class RedisStore(Generic[M]):
    def __init__(self, model: type[M], url: str, namespace: str) -> None:
        import redis.asyncio as redis

        self._model = model
        self._client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self._namespace = namespace
        self._compare_and_set = self._client.register_script(_COMPARE_AND_SET)
        # The raw value last read or written per key: the first guess of the next update. One entry
        # per key (a budget, the quota), so it stays as small as the set of keys.
        self._seen: dict[str, str] = {}
        # Updates of one key from this proxy go one at a time: each starts from the value the one
        # before wrote and succeeds at once, where racing each other they would retry O(n^2) times
        # (seen: 240 script calls per request at concurrency 16). Other proxies still race by CAS.
        self._turns: dict[str, asyncio.Lock] = {}

    @property
    def client(self) -> Any:
        return self._client

    def _key(self, key: str) -> str:
        return f"{REDIS_KEY_PREFIX}{self._namespace}:{key}"

    def _parse(self, raw: str | bytes | None) -> M:
        return self._model.model_validate_json(raw) if raw else self._model()

    async def read(self, key: str) -> M:
        async with _reaching_redis():
            stored = await self._client.get(self._key(key))
        raw = stored.decode() if isinstance(stored, bytes) else stored  # decode_responses: already text
        self._seen[key] = raw or ""
        return self._parse(raw)

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        async with self._turns.setdefault(key, asyncio.Lock()):
            return await self._update(key, change)

    async def _update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        full_key = self._key(key)
        expected = self._seen.get(key, "")
        async with _reaching_redis():
            for _ in range(MAX_WATCH_RETRIES):
                value, result = change(self._parse(expected))
                written = value.model_dump_json()
                stored, held = await self._compare_and_set(keys=[full_key], args=[expected, written, REDIS_TTL_SECONDS])
                if int(stored):
                    self._seen[key] = written
                    return result
                expected = held  # another proxy changed it first: recompute on its value
        self._seen.pop(key, None)
        raise StoreUnavailable(f"redis: {full_key} changed under {MAX_WATCH_RETRIES} attempts in a row")


@contextlib.asynccontextmanager
async def _reaching_redis() -> AsyncIterator[None]:
    """Redis errors become StoreUnavailable (naming the store, never its URL); /health follows."""
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError, asyncio.TimeoutError) as err:
        STORE_HEALTH.record(False, f"redis unreachable ({type(err).__name__})")
        raise StoreUnavailable(f"the redis state store is unreachable ({type(err).__name__})") from None
    else:
        STORE_HEALTH.record(True)


class SqliteStore(MemoryStore[M]):
    """Kept in memory and written behind to an embedded SQLite file, so spend survives a restart.

    A write per request cost the proxy ~15% of its throughput; instead changes are flushed at most
    FLUSH_SECONDS later and when the process exits. The event loop only serialises the changed
    values (under the lock, so a value is never written half-changed); the SQLite transaction runs
    on one writer thread, in order. One proxy owns its file; several proxies share state through Redis.
    """

    def __init__(self, model: type[M], path: Path, namespace: str) -> None:
        super().__init__(model)
        self._namespace = namespace
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        prefix = f"{namespace}:"
        rows = self._db.execute("SELECT key, value FROM state WHERE key LIKE ?", (prefix + "%",)).fetchall()
        self._values = {key.removeprefix(prefix): model.model_validate_json(value) for key, value in rows}
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"glm-saver-sqlite-{namespace}")
        self._written: Future[None] | None = None  # the last write handed to the writer thread
        self._db_lock = threading.Lock()
        atexit.register(self.flush)

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        result = await super().update(key, change)
        with self._lock:
            self._dirty.add(key)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_behind)
        return result

    def _take_dirty(self) -> list[tuple[str, str]]:
        with self._lock:
            rows = [(f"{self._namespace}:{key}", self._values[key].model_dump_json()) for key in self._dirty]
            self._dirty.clear()
            self._flush_scheduled = False
            return rows

    def _write(self, rows: list[tuple[str, str]]) -> None:
        with self._db_lock, self._db:  # one transaction
            self._db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", rows)

    def _flush_behind(self) -> None:
        """On the loop's timer: hand the changed values to the writer thread, never wait for disk."""
        rows = self._take_dirty()
        if rows:
            self._written = self._writer.submit(self._write, rows)

    def flush(self) -> None:
        """Write every change now and wait for it (at exit, and for tests)."""
        rows = self._take_dirty()
        if self._written is not None:
            self._written.result()  # older rows first: they must not land after these
        if rows:
            self._write(rows)


def _resolve_env(value: str) -> str | None:
    return os.environ.get(value.removeprefix("os.environ/")) if value.startswith("os.environ/") else value


def redis_url(settings: GlmSaverSettings, config: Mapping[str, Any]) -> str:
    """glm_saver.redis_url, else LiteLLM's router_settings redis_*, else REDIS_URL / REDIS_HOST+PORT."""
    if settings.redis_url:
        url = _resolve_env(settings.redis_url)
        if not url:
            raise ConfigError(f"glm_saver.redis_url: {settings.redis_url} is not set in the environment")
        return url
    router = config.get("router_settings") or {}
    host, port = router.get("redis_host"), router.get("redis_port")
    if host and port:
        password = _resolve_env(str(router["redis_password"])) if router.get("redis_password") else None
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{_resolve_env(str(host))}:{_resolve_env(str(port))}"
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    if os.environ.get("REDIS_HOST") and os.environ.get("REDIS_PORT"):
        return f"redis://{os.environ['REDIS_HOST']}:{os.environ['REDIS_PORT']}"
    raise ConfigError("glm_saver.state: redis needs glm_saver.redis_url, router_settings.redis_host/redis_port or REDIS_URL")


def build_store(model: type[M], settings: GlmSaverSettings, config: Mapping[str, Any], namespace: str, sqlite_path: Path | None = None) -> Store[M]:
    """Redis when configured; else SQLite where a path is given (state that must survive restarts);
    else memory (state that is only worth a minute, like rate-limit headroom)."""
    if settings.state == "redis":
        return RedisStore(model, redis_url(settings, config), namespace)
    if settings.state == "sqlite" and sqlite_path is not None:
        return SqliteStore(model, sqlite_path, namespace)
    return MemoryStore(model)
