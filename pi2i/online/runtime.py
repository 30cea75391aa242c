"""Online PI2I: the live version, the recommendation cache and the nearline recompute (paper §4.7).

A click lands in the user's online history and schedules an asynchronous PRS inference whose top-K goes into a
cache; ``recommend`` answers from that cache when the cached result was computed from the user's current
history, computes on a miss, and falls back to popularity for users without usable history. Everything here is
plain Python (no BentoML), so the service in ``serving/`` stays a thin HTTP adapter.

Hot swap: the live version is one reference (``self._live``). A reload loads and verifies the new version beside
the old one, warms it, then assigns the reference; each request takes one snapshot of it at its start, so
in-flight requests finish on the version they began with. A version that fails to load or verify is recorded
in ``last_error`` and the old one keeps serving.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pi2i.publish import registry as reg
from pi2i.config import ServingConfig
from pi2i.contracts import exists, join, read_json, read_parquet
from pi2i.online.history import HistoryStore, InMemoryHistoryStore, load_histories
from pi2i.ibs.i2i import I2IIndex

log = logging.getLogger("pi2i.online.runtime")

INT64_MAX = 2**63 - 1


class ServingError(Exception):
    """A request that cannot be answered as asked; ``status`` is the HTTP status the adapter should use."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(ServingError):
    status = 404


class Unavailable(ServingError):
    status = 503


# --------------------------------------------------------------------------------------------------- live version

@dataclass
class LoadedVersion:
    """Everything one registry version needs to answer requests, loaded and verified."""

    version: str
    path: str
    scorer: Any  # pi2i.prs.scoring.Scorer
    i2i: I2IIndex
    popularity: np.ndarray  # item ids, most popular first
    catalog: np.ndarray  # sorted item ids the version knows (i2i triggers and targets, items, popularity)
    histories: pa.Table | None
    metrics: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    load_s: float = 0.0

    def knows(self, item_id: int) -> bool:
        pos = int(np.searchsorted(self.catalog, item_id))
        return pos < len(self.catalog) and int(self.catalog[pos]) == item_id


def load_version(registry: str, version: str, verify: bool = True) -> LoadedVersion:
    """Verify (sha256 manifest), load the i2i index and the scorer, and warm them with one inference."""
    from pi2i.prs.scoring import Scorer  # the one scoring path shared with evaluation

    t0 = time.perf_counter()
    if verify:
        reg.verify(registry, version)
    vpath = reg.version_path(registry, version)
    i2i = I2IIndex.load(join(vpath, reg.I2I_FILE))
    model_dir = join(vpath, reg.MODEL_DIR)
    scorer = Scorer.load(model_dir, i2i)
    popularity = np.asarray(scorer.popularity, dtype=np.int64)
    parts = [i2i.triggers, i2i.targets, popularity]
    items_uri = join(model_dir, "items.parquet")
    if exists(items_uri):
        parts.append(read_parquet(items_uri, columns=["item_id"]).column("item_id").to_numpy().astype(np.int64))
    catalog = np.unique(np.concatenate(parts))
    metrics_uri = join(vpath, reg.METRICS_FILE)
    metrics = read_json(metrics_uri) if exists(metrics_uri) else {}
    lv = LoadedVersion(version, vpath, scorer, i2i, popularity, catalog, load_histories(model_dir), metrics)
    if len(i2i.triggers):  # first inference pays lazy init (torch, numba): pay it before going live
        probe = i2i.triggers[:3]
        scorer.recommend(probe, np.arange(len(probe), dtype=np.int64) * 1_000_000 + 1_700_000_000_000_000, 10)
    lv.load_s = time.perf_counter() - t0
    return lv


# ---------------------------------------------------------------------------------------------------------- cache

@dataclass
class CachedRec:
    """One cached top-K: arrays, not objects, so a large in-process cache stays compact."""

    fp: int  # fingerprint of the history it was computed from
    items: np.ndarray  # int64
    scores: np.ndarray  # float32
    trig_indptr: np.ndarray  # int64, len(items)+1
    trig_flat: np.ndarray  # int64
    num_candidates: int
    num_personalized: int  # items[:num_personalized] come from PRS, the rest is popularity fill
    computed_at: float

    _HDR = struct.Struct("<QqqqqdI")

    def to_bytes(self) -> bytes:
        return self._HDR.pack(self.fp, len(self.items), len(self.trig_flat), self.num_candidates,
                              self.num_personalized, self.computed_at, 0) + \
            self.items.astype("<i8").tobytes() + self.scores.astype("<f4").tobytes() + \
            self.trig_indptr.astype("<i8").tobytes() + self.trig_flat.astype("<i8").tobytes()

    @classmethod
    def from_bytes(cls, b: bytes) -> CachedRec:
        fp, n, nt, nc, npers, at, _ = cls._HDR.unpack_from(b)
        o = cls._HDR.size
        items = np.frombuffer(b, "<i8", n, o); o += 8 * n
        scores = np.frombuffer(b, "<f4", n, o); o += 4 * n
        indptr = np.frombuffer(b, "<i8", n + 1, o); o += 8 * (n + 1)
        flat = np.frombuffer(b, "<i8", nt, o)
        return cls(fp, items, scores, indptr, flat, nc, npers, at)

    def answer(self, k: int) -> dict[str, Any]:
        k = min(k, len(self.items))
        ip = self.trig_indptr
        flat = self.trig_flat.tolist()
        return {"items": self.items[:k].tolist(), "scores": self.scores[:k].astype(float).tolist(),
                "triggers": [flat[ip[i]:ip[i + 1]] for i in range(k)],
                "num_candidates": self.num_candidates, "num_personalized": min(self.num_personalized, k)}


class Cache(Protocol):
    kind: str

    def get(self, key: str) -> CachedRec | None: ...

    def set(self, key: str, value: CachedRec) -> None: ...

    def info(self) -> dict[str, Any]: ...


class LRUCache:
    """In-process LRU with a TTL (the embedded default)."""

    kind = "memory"

    def __init__(self, maxsize: int = 50_000, ttl_s: float = 3600) -> None:
        self.maxsize, self.ttl_s = int(maxsize), float(ttl_s)
        self._d: OrderedDict[str, tuple[float, CachedRec]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedRec | None:
        with self._lock:
            hit = self._d.get(key)
            if hit is None:
                return None
            if self.ttl_s and time.time() - hit[0] > self.ttl_s:
                del self._d[key]
                return None
            self._d.move_to_end(key)
            return hit[1]

    def set(self, key: str, value: CachedRec) -> None:
        with self._lock:
            self._d[key] = (time.time(), value)
            self._d.move_to_end(key)
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "entries": len(self._d), "healthy": True}


class RedisCache:
    """Redis-backed cache shared by replicas. Never raises: a failure is logged, counted, and Redis is skipped
    for ``retry_s`` so requests are computed instead of waiting on timeouts."""

    kind = "redis"

    def __init__(self, url: str, ttl_s: float = 3600, timeout_s: float = 0.05, retry_s: float = 2.0) -> None:
        import redis

        self.url, self.ttl_s, self.retry_s = url, int(ttl_s), float(retry_s)
        self._r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._errors = (redis.RedisError, OSError)
        self._down_until = 0.0
        self.failures = 0
        self.last_failure: str | None = None

    def _fail(self, e: Exception) -> None:
        self.failures += 1
        self.last_failure = f"{type(e).__name__}: {e}"
        self._down_until = time.monotonic() + self.retry_s
        log.warning("redis cache unavailable (%s); computing without cache for %.1fs", e, self.retry_s)

    def get(self, key: str) -> CachedRec | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            raw = self._r.get(key)
        except self._errors as e:
            self._fail(e)
            return None
        return CachedRec.from_bytes(raw) if raw else None

    def set(self, key: str, value: CachedRec) -> None:
        if time.monotonic() < self._down_until:
            return
        try:
            self._r.set(key, value.to_bytes(), ex=self.ttl_s or None)
        except self._errors as e:
            self._fail(e)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "healthy": time.monotonic() >= self._down_until,
                "failures": self.failures, "last_failure": self.last_failure}


def make_cache(cfg: ServingConfig) -> Cache:
    if cfg.redis_url:
        return RedisCache(cfg.redis_url, cfg.cache_ttl_s, cfg.redis_timeout_s, cfg.redis_retry_s)
    return LRUCache(cfg.cache_size, cfg.cache_ttl_s)


def fingerprint(items: np.ndarray, ts: np.ndarray) -> int:
    """Identity of a history: a cached result is fresh only if computed from the same one."""
    return zlib.crc32(ts.astype(np.int64).tobytes(), zlib.crc32(items.astype(np.int64).tobytes()))


# ------------------------------------------------------------------------------------------------- recommender

class OnlineRecommender:
    """The live version + history store + cache + nearline recompute. Thread-safe."""

    def __init__(self, registry: str, cfg: ServingConfig | None = None, history: HistoryStore | None = None,
                 cache: Cache | None = None, verify: bool = True,
                 observe: Callable[[str, float], None] | None = None) -> None:
        self.registry = str(registry)
        self.cfg = cfg or ServingConfig()
        self.verify = verify
        self.cache: Cache = cache if cache is not None else make_cache(self.cfg)
        self._own_history = history is None  # seeded from (and reseeded with) each version's histories
        self.history: HistoryStore = history if history is not None else InMemoryHistoryStore(
            max_len=self.cfg.history_len)
        self._observe = observe or (lambda name, seconds: None)
        self._live: LoadedVersion | None = None
        self._reload_lock = threading.Lock()
        self._pending: dict[int, bool] = {}  # user -> dirty (a click arrived while its recompute ran)
        self._pending_lock = threading.Lock()
        self._landed = threading.Condition(self._pending_lock)  # notified when a user's recompute finishes
        self._nearline = ThreadPoolExecutor(self.cfg.nearline_workers, thread_name_prefix="pi2i-nearline")
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.last_error: dict[str, Any] | None = None
        self.last_reload: dict[str, Any] | None = None
        self.counts: dict[str, int] = {"cache": 0, "computed": 0, "fallback": 0, "events": 0, "nearline": 0,
                                       "nearline_errors": 0, "swaps": 0}

    # ---- lifecycle
    @property
    def live(self) -> LoadedVersion | None:
        return self._live

    @property
    def ready(self) -> bool:
        return self._live is not None

    @property
    def inline_ok(self) -> bool:
        """True when cache and history are in-process: the cached path may run on an event loop."""
        return isinstance(self.cache, LRUCache) and isinstance(self.history, InMemoryHistoryStore)

    def reload(self, version: str | None = None) -> dict[str, Any]:
        """Load ``version`` (default: the registry's CURRENT) beside the live one and swap it in.

        Returns ``{"status": swapped|unchanged|failed|empty, "version", "previous", "error"?}``; never raises
        for a bad version (the old one keeps serving)."""
        with self._reload_lock:
            old = self._live
            try:
                target = version or reg.current(self.registry)
            except Exception as e:  # noqa: BLE001 - unreadable registry: keep serving
                target, err = None, f"cannot read registry CURRENT: {e}"
                self.last_error = {"version": None, "error": err, "at": time.time()}
                return self._note({"status": "failed", "version": old and old.version, "error": err})
            if target is None:
                return self._note({"status": "empty", "version": old and old.version,
                                   "error": f"registry {self.registry} has no live version"})
            if old is not None and old.version == target:
                return {"status": "unchanged", "version": target}
            try:
                new = load_version(self.registry, target, verify=self.verify)
            except Exception as e:  # noqa: BLE001 - any failure to load leaves the old version serving
                err = f"{type(e).__name__}: {e}"
                log.error("refusing version %s: %s (still serving %s)", target, err, old and old.version)
                self.last_error = {"version": target, "error": err, "at": time.time()}
                return self._note({"status": "failed", "version": old and old.version, "refused": target,
                                   "error": err})
            self.swap(new)
            log.info("serving version %s (was %s; loaded in %.2fs)", new.version, old and old.version, new.load_s)
            return self._note({"status": "swapped", "version": new.version, "previous": old and old.version,
                               "load_s": round(new.load_s, 3)})

    def _note(self, result: dict[str, Any]) -> dict[str, Any]:
        self.last_reload = {**result, "at": time.time()}
        return result

    def swap(self, new: LoadedVersion) -> None:
        if self._own_history and isinstance(self.history, InMemoryHistoryStore):
            self.history.reseed(new.histories)
        self._live = new  # the swap: one reference assignment; requests hold their own snapshot
        self.counts["swaps"] += 1
        if self.last_error and self.last_error.get("version") == new.version:
            self.last_error = None

    def start_polling(self) -> None:
        """Watch the registry's CURRENT every ``poll_s`` and hot-swap when it changes."""
        if self.cfg.poll_s <= 0 or self._poller is not None:
            return

        def loop() -> None:
            refused = self.last_error.get("version") if self.last_error else None  # e.g. refused at startup
            while not self._stop.wait(self.cfg.poll_s):
                try:
                    cur = reg.current(self.registry)
                except Exception as e:  # noqa: BLE001 - transient storage errors: try again next tick
                    log.warning("registry poll failed: %s", e)
                    continue
                live = self._live.version if self._live else None
                if cur and cur != live and cur != refused:
                    res = self.reload(cur)
                    refused = cur if res["status"] == "failed" else None

        self._poller = threading.Thread(target=loop, name="pi2i-registry-poll", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        self._nearline.shutdown(wait=False, cancel_futures=True)

    # ---- requests
    def _snapshot(self) -> LoadedVersion:
        v = self._live
        if v is None:
            err = self.last_error["error"] if self.last_error else "no version loaded yet"
            raise Unavailable(f"no live version: {err}")
        return v

    def check_k(self, k: int) -> int:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ServingError(f"k must be a positive integer, got {k!r}")
        if k > self.cfg.max_k:
            raise ServingError(f"k={k} is above serving.max_k={self.cfg.max_k}")
        return k

    @staticmethod
    def check_id(name: str, value: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT64_MAX:
            raise ServingError(f"{name} must be an integer in [0, 2^63-1], got {value!r}")
        return value

    @staticmethod
    def _key(v: LoadedVersion, user_id: int, exclude_seen: bool) -> str:
        return f"pi2i:{v.version}:{user_id}:{int(exclude_seen)}"

    def cached(self, user_id: int, k: int, exclude_seen: bool = True) -> dict[str, Any] | None:
        """The answer if the cache holds a fresh one, else None (cheap: no scoring)."""
        v = self._snapshot()
        items, ts = self.history.get(user_id)
        if len(items) == 0:
            return None
        hit = self.cache.get(self._key(v, user_id, exclude_seen))
        if hit is None or hit.fp != fingerprint(items, ts) or len(hit.items) < k:
            return None
        self.counts["cache"] += 1
        return self._wrap(v, user_id, "cache", hit.answer(k), len(items))

    def recommend(self, user_id: int, k: int, exclude_seen: bool = True) -> dict[str, Any]:
        """Top-k for a user: fresh cache entry, else PRS inference (cached), else popularity fallback."""
        self.check_id("user_id", user_id)
        self.check_k(k)
        v = self._snapshot()
        items, ts = self.history.get(user_id)
        if len(items):
            key = self._key(v, user_id, exclude_seen)
            fp = fingerprint(items, ts)
            hit = self.cache.get(key)
            if (hit is None or hit.fp != fp) and exclude_seen and k <= self.cfg.cache_k \
                    and self._await_nearline(user_id):
                hit = self.cache.get(key)  # the click's own recompute just landed: don't compute twice
            if hit is not None and hit.fp == fp and len(hit.items) >= k:
                self.counts["cache"] += 1
                return self._wrap(v, user_id, "cache", hit.answer(k), len(items))
            t0 = time.perf_counter()
            rec = self._compute(v, items, ts, exclude_seen, max(k, self.cfg.cache_k), fp)
            self._observe("compute", time.perf_counter() - t0)
            if rec is not None:
                self.cache.set(key, rec)
                self.counts["computed"] += 1
                return self._wrap(v, user_id, "computed", rec.answer(k), len(items))
        self.counts["fallback"] += 1
        return self._wrap(v, user_id, "fallback", self._popular(v, items if exclude_seen else None, k), len(items))

    def _compute(self, v: LoadedVersion, items: np.ndarray, ts: np.ndarray, exclude_seen: bool, k: int,
                 fp: int) -> CachedRec | None:
        exclude = np.unique(items) if exclude_seen else None
        r = v.scorer.recommend(items, ts, k, exclude=exclude)
        n = len(r.items)
        if n == 0:
            return None
        out_items = np.asarray(r.items, np.int64)
        scores = np.asarray(r.scores, np.float32)
        trig = [np.asarray(t, np.int64) for t in r.triggers]
        if n < k:  # few candidates: fill the tail from popularity so the feed is never short
            skip = out_items if exclude is None else np.concatenate([out_items, exclude])
            fill = v.popularity[~np.isin(v.popularity, skip)][: k - n]
            out_items = np.concatenate([out_items, fill])
            scores = np.concatenate([scores, np.zeros(len(fill), np.float32)])
            trig += [np.empty(0, np.int64)] * len(fill)
        lens = np.fromiter((len(t) for t in trig), np.int64, len(trig))
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = np.concatenate(trig) if trig else np.empty(0, np.int64)
        return CachedRec(fp, out_items, scores, indptr, flat.astype(np.int64), int(r.num_candidates), n,
                         time.time())

    @staticmethod
    def _popular(v: LoadedVersion, exclude: np.ndarray | None, k: int) -> dict[str, Any]:
        pop = v.popularity if exclude is None or not len(exclude) else v.popularity[~np.isin(v.popularity, exclude)]
        pop = pop[:k]
        return {"items": pop.tolist(), "scores": [0.0] * len(pop), "triggers": [[] for _ in range(len(pop))],
                "num_candidates": 0, "num_personalized": 0}

    @staticmethod
    def _wrap(v: LoadedVersion, user_id: int, source: str, ans: dict[str, Any], history_len: int) -> dict:
        return {"user_id": user_id, **ans, "version": v.version, "source": source, "history_len": history_len}

    def record_event(self, user_id: int, item_id: int, ts_us: int | None = None) -> dict[str, Any]:
        """Append a click to the online history and schedule the nearline recompute of the user's top-K."""
        self.check_id("user_id", user_id)
        self.check_id("item_id", item_id)
        v = self._snapshot()
        if not self.cfg.accept_unknown_items and not v.knows(item_id):
            raise NotFound(f"item {item_id} is unknown to version {v.version}")
        if ts_us is None:
            ts_us = int(time.time() * 1_000_000)
        self.history.append(user_id, item_id, int(ts_us))
        self.counts["events"] += 1
        with self._pending_lock:
            running = user_id in self._pending
            self._pending[user_id] = running  # already queued/running: mark dirty so it runs again
        if not running:
            self._nearline.submit(self._nearline_run, user_id, time.perf_counter())
        return {"user_id": user_id, "item_id": item_id, "ts": int(ts_us), "version": v.version,
                "recompute": "coalesced" if running else "scheduled"}

    def _nearline_run(self, user_id: int, t_click: float) -> None:
        while True:
            with self._pending_lock:
                self._pending[user_id] = False
            try:
                v = self._snapshot()
                items, ts = self.history.get(user_id)
                fp = fingerprint(items, ts)
                rec = self._compute(v, items, ts, True, self.cfg.cache_k, fp) if len(items) else None
                if rec is not None:
                    self.cache.set(self._key(v, user_id, True), rec)
                self.counts["nearline"] += 1
                self._observe("nearline", time.perf_counter() - t_click)
            except Exception:  # a failed recompute only costs a cache miss later
                self.counts["nearline_errors"] += 1
                log.exception("nearline recompute failed for user %s", user_id)
            with self._pending_lock:
                if not self._pending.get(user_id):
                    self._pending.pop(user_id, None)
                    self._landed.notify_all()
                    return

    def _await_nearline(self, user_id: int) -> bool:
        """Wait up to ``nearline_wait_s`` for a queued/running recompute of this user; True if one finished."""
        if self.cfg.nearline_wait_s <= 0:
            return False
        end = time.monotonic() + self.cfg.nearline_wait_s
        with self._landed:
            if user_id not in self._pending:
                return False
            while user_id in self._pending:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._landed.wait(left)
        return True

    def pending(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def similar(self, item_id: int, k: int) -> dict[str, Any]:
        """The raw i2i row of one item (Swing targets, scores, ranks), best first."""
        self.check_id("item_id", item_id)
        self.check_k(k)
        v = self._snapshot()
        targets, scores, ranks = v.i2i.row(item_id, limit=k)
        if len(targets) == 0 and not v.knows(item_id):
            raise NotFound(f"item {item_id} is unknown to version {v.version}")
        return {"item_id": item_id, "items": targets.tolist(), "scores": scores.astype(float).tolist(),
                "ranks": ranks.tolist(), "version": v.version}

    def info(self) -> dict[str, Any]:
        v = self._live
        try:
            cur = reg.current(self.registry)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            cur = f"unreadable: {e}"
        return {
            "version": v and v.version, "loaded_at": v and v.loaded_at, "load_s": v and round(v.load_s, 3),
            "registry": self.registry, "registry_current": cur, "ready": v is not None,
            "last_error": self.last_error, "last_reload": self.last_reload,
            "gate": (v.metrics.get("gate") if v and isinstance(v.metrics, dict) else None),
            "cache": self.cache.info(), "history_store": type(self.history).__name__,
            "counts": dict(self.counts), "nearline_pending": self.pending(),
        }


def make_history_store(cfg: ServingConfig, feature_repo: str | None) -> HistoryStore | None:
    """Feast-backed store when a feature repo is given, else None (the recommender seeds an in-memory one)."""
    if not feature_repo:
        return None
    from pi2i.data.features import FeastHistoryStore

    return FeastHistoryStore(feature_repo)


def parse_ts(value: int | str | None) -> int | None:
    """Event time as microseconds since epoch from an int (µs) or an ISO-8601 string; ServingError if bad."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ServingError("ts must be microseconds since epoch (int) or an ISO-8601 string")
    if isinstance(value, int):
        us = value
    else:
        from datetime import datetime

        try:
            dt = datetime.fromisoformat(str(value))  # 3.11 reads a trailing Z
        except ValueError:
            raise ServingError(f"ts {value!r} is not an ISO-8601 time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        us = int(dt.timestamp() * 1_000_000)
    lo, hi = 946_684_800_000_000, 4_102_444_800_000_000  # 2000-01-01 .. 2100-01-01, as data.min_ts/max_ts
    if not lo <= us < hi:
        raise ServingError(f"ts {value!r} is outside 2000-01-01..2100-01-01 (microseconds since epoch)")
    return us


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
