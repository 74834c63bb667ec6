"""Where shared state lives: in memory for one proxy, in Redis for several behind a load balancer.

Both stores offer the same two operations on a pydantic model kept under a key: read it, or apply
a pure function to it atomically. Redis uses optimistic transactions (WATCH/MULTI), so the rules
themselves are written once, in Python, and several proxies can never interleave an update.
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
        self._client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
        )
        self._namespace = namespace

    def _key(self, key: str) -> str:
        return f"{REDIS_KEY_PREFIX}{self._namespace}:{key}"

    def _parse(self, raw: str | bytes | None) -> M:
        return self._model.model_validate_json(raw) if raw else self._model()

    async def read(self, key: str) -> M:
        async with _reaching_redis():
            return self._parse(await self._client.get(self._key(key)))

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        from redis.exceptions import WatchError

        full_key = self._key(key)
        async with _reaching_redis(), self._client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_WATCH_RETRIES):
                try:
                    await pipe.watch(full_key)
                    value, result = change(self._parse(await pipe.get(full_key)))
                    pipe.multi()
                    pipe.set(full_key, value.model_dump_json(), ex=REDIS_TTL_SECONDS)
                    await pipe.execute()
                    return result
                except WatchError:
                    continue  # another proxy changed it first: recompute on its value
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
    FLUSH_SECONDS later and when the process exits. One proxy owns its file; several proxies share
    state through Redis.
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
        atexit.register(self.flush)

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        result = await super().update(key, change)
        with self._lock:
            self._dirty.add(key)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
        return result

    def flush(self) -> None:
        with self._lock:
            rows = [(f"{self._namespace}:{key}", self._values[key].model_dump_json()) for key in self._dirty]
            self._dirty.clear()
            self._flush_scheduled = False
            if rows:
                with self._db:  # one transaction
                    self._db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", rows)


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


def build_store(
    model: type[M], settings: GlmSaverSettings, config: Mapping[str, Any], namespace: str, sqlite_path: Path | None = None
) -> Store[M]:
    """Redis when configured; else SQLite where a path is given (state that must survive restarts);
    else memory (state that is only worth a minute, like rate-limit headroom)."""
    if settings.state == "redis":
        return RedisStore(model, redis_url(settings, config), namespace)
    if settings.state == "sqlite" and sqlite_path is not None:
        return SqliteStore(model, sqlite_path, namespace)
    return MemoryStore(model)
