"""Where shared state lives: in memory for one proxy, in Redis for several behind a load balancer.

Every store offers the same operations on pydantic models kept under keys: read one, or apply a
pure function to one key (`update`) or to several at once (`update_all`, all or nothing)
atomically. Redis uses optimistic transactions, so the rules themselves are written once, in
Python, and several proxies can never interleave an update: the change is computed on the values
this proxy last saw and written by a compare-and-set script that only stores them if Redis still
holds those values (it compares their SHA-1, so a value is sent once, not twice); if another proxy
got there first, the script answers with what it holds and the change is recomputed on that
(bounded retries).

Round trips: one `RedisLink` per Redis URL and process sends every command issued in the same turn
of the event loop (or the next) as one pipeline, so updates the caller starts together (`asyncio.gather`: the
books, the history, the headroom and the budgets of one answer) cost one round trip between them.
`side_by_side` starts such updates together on Redis only: elsewhere nothing is gained by it, and a
task per update costs the event loop more than the update itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from glm_saver.settings import ConfigError, GlmSaverSettings, is_redis_url

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
T = TypeVar("T")

REDIS_KEY_PREFIX = "glm_saver:"
# Shared state outlives a day's rate-limit window, not much more.
REDIS_TTL_SECONDS = 2 * 24 * 3600
# How long a change to SQLite-backed state may wait in memory before it is written.
FLUSH_SECONDS = 1.0
# A Redis that does not answer within this must not hold a request up: money decisions go local.
REDIS_TIMEOUT_SECONDS = 2.0
# Optimistic transactions retried this often before the update is given up as unavailable.
MAX_WATCH_RETRIES = 50

# KEYS: the keys; ARGV[1]: the TTL, then per key the SHA-1 of the value expected ("" for none) and
# the new value. Stores the new values only if every key still holds the expected one; else answers
# with what each holds ("" for none).
_COMPARE_AND_SET = """
local held, same = {}, true
for i, key in ipairs(KEYS) do
  held[i] = redis.call('GET', key) or ''
  if (held[i] == '' and '' or redis.sha1hex(held[i])) ~= ARGV[2 * i] then same = false end
end
if not same then return {0, unpack(held)} end
for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[2 * i + 1], 'EX', ARGV[1]) end
return {1}
"""


async def side_by_side(steps: Sequence[Awaitable[T]], at_once: bool) -> list[T | BaseException]:
    """Every step's result or exception: started together when `at_once` (a gather, one Redis round
    trip), else awaited one after the other; a failed step never stops the others. A single step is
    awaited as it is: a gather would only add a task to it."""
    if at_once and len(steps) > 1:
        return await asyncio.gather(*steps, return_exceptions=True)
    results: list[T | BaseException] = []
    for step in steps:
        try:
            results.append(await step)
        except Exception as err:  # noqa: BLE001 - handed back, as the gather does
            results.append(err)
    return results


def raise_first(results: Sequence[object]) -> None:
    """The first exception of `side_by_side`'s results, raised."""
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest() if text else ""


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

    async def update_all(self, keys: Sequence[str], change: Callable[[list[M]], tuple[list[M], R]]) -> R: ...


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

    async def update_all(self, keys: Sequence[str], change: Callable[[list[M]], tuple[list[M], R]]) -> R:
        with self._lock:
            values, result = change([self._values.get(key) or self._model() for key in keys])
            self._values.update(zip(keys, values, strict=True))
            return result


class LinkScript:
    """A Lua script run by its SHA-1 (loaded into Redis the first time Redis does not know it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisLink:
    """This process's connection to one Redis: the commands issued in one turn of the event loop go
    out together as one pipeline (one round trip). Errors reach each caller as StoreUnavailable."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[Any], LinkScript | None]] = []
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> Any:
        """The client for the running loop (a client's connections belong to the loop that made them)."""
        import redis.asyncio as redis

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = redis.Redis.from_url(
                self._url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
            )
            self._loop, self._queued = loop, []
        return self._client

    async def call(self, *command: Any, script: LinkScript | None = None) -> Any:
        client = self.client
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._queued:  # the first of this turn: send once the others of the turn are queued
            task = asyncio.get_running_loop().create_task(self._send(client))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._queued.append((command, future, script))
        async with _reaching_redis():
            return await future

    async def run(self, script: LinkScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self.call("EVALSHA", script.sha, len(keys), *keys, *args, script=script)

    async def _send(self, client: Any) -> None:
        # One more turn: calls that callers start in tasks of their own (a gather inside a gather)
        # are queued a turn after their parent's, and go in this pipeline too.
        await asyncio.sleep(0)
        batch, self._queued = self._queued, []
        try:
            if len(batch) == 1:
                results = [await _result_of(client.execute_command(*batch[0][0]))]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for command, _, _ in batch:
                        pipe.execute_command(*command)
                    results = await pipe.execute(raise_on_error=False)
        except Exception as err:  # noqa: BLE001 - whatever failed, every caller of the batch hears of it
            results = [err] * len(batch)
        for (command, future, script), answer in zip(batch, results, strict=True):
            result = await _result_of(_load_and_run(client, script, command)) if script is not None and _unknown_script(answer) else answer
            _settle(future, result, result if isinstance(result, BaseException) else None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Answer a waiting caller with its result, or its error; a future answered already, or whose
    caller gave up waiting, is left alone."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _unknown_script(result: Any) -> bool:
    from redis.exceptions import NoScriptError

    return isinstance(result, NoScriptError)


async def _load_and_run(client: Any, script: LinkScript, command: tuple[Any, ...]) -> Any:
    """Redis lost its scripts (a restart, SCRIPT FLUSH): load this one and run it again."""
    await client.script_load(script.source)
    return await client.execute_command(*command)


async def _result_of(call: Any) -> Any:
    try:
        return await call
    except Exception as err:  # noqa: BLE001 - handed to the caller waiting for it
        return err


def hash_fields(reply: Any) -> dict[str, str]:
    """HGETALL's reply as a dict (a pipeline hands it over as parsed, a bare command too; RESP2 lists, just in case)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


_LINKS: dict[str, RedisLink] = {}


def redis_link(url: str) -> RedisLink:
    """The one link of this process to `url`, shared by every store on it."""
    return _LINKS.setdefault(url, RedisLink(url))


class RedisStore(Generic[M]):
    def __init__(self, model: type[M], url: str, namespace: str) -> None:
        self._model = model
        self.link = redis_link(url)
        self._namespace = namespace
        # The raw value last read or written per key: the first guess of the next update. One entry
        # per key (a budget, the quota), so it stays as small as the set of keys.
        self._seen: dict[str, str] = {}
        # Updates of one key from this proxy go one at a time: each starts from the value the one
        # before wrote and succeeds at once, where racing each other they would retry O(n^2) times
        # (seen: 240 script calls per request at concurrency 16). Other proxies still race by CAS.
        self._turns: dict[str, asyncio.Lock] = {}
        # Updates of a key that arrive while its turn is taken wait here, and the next turn applies
        # them all in order and writes them in one compare-and-set: at concurrency 16 the quota's
        # updates cost one round trip per turn, not one each.
        self._waiting: dict[str, list[tuple[Callable[[M], tuple[M, Any]], asyncio.Future[Any]]]] = {}
        self._committing: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> Any:
        return self.link.client

    def _key(self, key: str) -> str:
        return f"{REDIS_KEY_PREFIX}{self._namespace}:{key}"

    def _parse(self, raw: str | None) -> M:
        return self._model.model_validate_json(raw) if raw else self._model()

    async def read(self, key: str) -> M:
        raw = await self.link.call("GET", self._key(key))
        self._seen[key] = raw or ""
        return self._parse(raw)

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(key)
        if waiting is not None:  # a turn of this key is under way: the next one takes this change too
            waiting.append((change, future))
        else:
            self._waiting[key] = [(change, future)]
            task = asyncio.get_running_loop().create_task(self._commit(key))
            self._committing.add(task)
            task.add_done_callback(self._committing.discard)
        return await future

    async def _commit(self, key: str) -> None:
        """Turn after turn, every change waiting for `key`, in the order they came, in one write."""
        batch: list[tuple[Callable[[M], tuple[M, Any]], asyncio.Future[Any]]] = []
        try:
            async with self._turns.setdefault(key, asyncio.Lock()):
                while batch := self._waiting[key]:
                    self._waiting[key] = []
                    try:
                        results = await self._update_all([key], lambda values: _apply_in_turn(values[0], [change for change, _ in batch]))
                    except Exception as err:  # noqa: BLE001 - StoreUnavailable (or a bug): every waiting caller hears of it
                        results = [_Failed(err)] * len(batch)
                    _answer(batch, results)
        finally:  # also when the loop cancels this turn: no caller is left waiting for a turn that never comes
            stranded = batch + self._waiting.pop(key, [])
            _answer(stranded, [_Failed(StoreUnavailable(f"redis: the update of {self._key(key)} was interrupted"))] * len(stranded))

    async def update_all(self, keys: Sequence[str], change: Callable[[list[M]], tuple[list[M], R]]) -> R:
        async with contextlib.AsyncExitStack() as turns:
            for key in sorted(set(keys)):  # always in the same order: two updates never wait on each other
                await turns.enter_async_context(self._turns.setdefault(key, asyncio.Lock()))
            return await self._update_all(list(keys), change)

    async def _update_all(self, keys: list[str], change: Callable[[list[M]], tuple[list[M], R]]) -> R:
        full_keys = [self._key(key) for key in keys]
        expected = [self._seen.get(key, "") for key in keys]
        for _ in range(MAX_WATCH_RETRIES):
            values, result = change([self._parse(raw) for raw in expected])
            written = [value.model_dump_json() for value in values]
            pairs = [part for guess, new in zip(expected, written, strict=True) for part in (_sha1(guess), new)]
            answer = await self.link.run(_CAS_SCRIPT, full_keys, [REDIS_TTL_SECONDS, *pairs])
            if int(answer[0]):
                self._seen.update(zip(keys, written, strict=True))
                return result
            expected = list(answer[1:])  # another proxy changed one first: recompute on what it holds
        for key in keys:
            self._seen.pop(key, None)
        raise StoreUnavailable(f"redis: {', '.join(full_keys)} changed under {MAX_WATCH_RETRIES} attempts in a row")


_CAS_SCRIPT = LinkScript(_COMPARE_AND_SET)


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: Exception


def _answer(callers: list[tuple[Any, asyncio.Future[Any]]], results: list[Any]) -> None:
    for (_, future), result in zip(callers, results, strict=True):
        _settle(future, result, result.error if isinstance(result, _Failed) else None)


def _apply_in_turn(value: M, changes: list[Callable[[M], tuple[M, Any]]]) -> tuple[list[M], list[Any]]:
    """The changes one after the other; one that raises leaves the value as it was for the next."""
    results: list[Any] = []
    for change in changes:
        try:
            value, result = change(value)
        except Exception as err:  # noqa: BLE001 - handed to that change's caller alone
            result = _Failed(err)
        results.append(result)
    return [value], results


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
        self._written_behind([key])
        return result

    async def update_all(self, keys: Sequence[str], change: Callable[[list[M]], tuple[list[M], R]]) -> R:
        result = await super().update_all(keys, change)
        self._written_behind(keys)
        return result

    def _written_behind(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._dirty.update(keys)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_behind)

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
        if not is_redis_url(url):  # its value is not said: it may hold a password
            raise ConfigError(f"glm_saver.redis_url: {settings.redis_url} must hold a redis://, rediss:// or unix:// URL")
        return url
    router = config.get("router_settings") or {}
    host, port = router.get("redis_host"), router.get("redis_port")
    if host and port:
        password = _resolve_env(str(router["redis_password"])) if router.get("redis_password") else None
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{_resolve_env(str(host))}:{_resolve_env(str(port))}"
    if os.environ.get("REDIS_URL"):
        if not is_redis_url(os.environ["REDIS_URL"]):
            raise ConfigError("glm_saver.state: redis reads REDIS_URL, which must hold a redis://, rediss:// or unix:// URL")
        return os.environ["REDIS_URL"]
    if os.environ.get("REDIS_HOST") and os.environ.get("REDIS_PORT"):
        return f"redis://{os.environ['REDIS_HOST']}:{os.environ['REDIS_PORT']}"
    raise ConfigError("glm_saver.state: redis needs glm_saver.redis_url, router_settings.redis_host/redis_port, REDIS_URL or REDIS_HOST and REDIS_PORT")


def build_store(model: type[M], settings: GlmSaverSettings, config: Mapping[str, Any], namespace: str, sqlite_path: Path | None = None) -> Store[M]:
    """Redis when configured; else SQLite where a path is given (state that must survive restarts);
    else memory (state that is only worth a minute, like rate-limit headroom)."""
    if settings.state == "redis":
        return RedisStore(model, redis_url(settings, config), namespace)
    if settings.state == "sqlite" and sqlite_path is not None:
        return SqliteStore(model, sqlite_path, namespace)
    return MemoryStore(model)
