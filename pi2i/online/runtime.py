"""Online retrieval: the live version, the recommendation cache and the nearline recompute (PI2I paper §4.7).

A click lands in the user's online history and schedules an asynchronous recompute of the user's top-K into a
cache; ``recommend`` answers from that cache when the cached result was computed from the user's current
history, computes on a miss, and falls back to popularity for users without usable history. Any method of
``pi2i.methods`` serves through the same path (its ``Retriever.recommend(..., explain=True)``); a model dir
without ``method.json`` is served by the PI2I :class:`~pi2i.prs.scoring.Scorer`. Everything here is plain
Python (no BentoML), so ``serving/`` stays a thin HTTP adapter.

Hot swap: the live version is one reference (``self._live``) that also carries the history view it serves.
A reload loads and verifies the new version beside the old one, pre-warms the cache for recently active users,
then assigns the reference; each request takes one snapshot of it at its start, so in-flight requests finish on
the version they began with. A version that fails to load or verify is recorded and the old one keeps serving.

Bounds: online clicks per user (``history_len``) and users with online clicks (``online_users_max``); the
recompute queue holds at most ``max_pending_recomputes`` users (a click for another user is refused with
429 and a retry hint), and a user's clicks coalesce into one recompute.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pi2i.config import DataConfig, ServingConfig
from pi2i.contracts import ITEMS_FILE, exists, join, read_json, read_parquet
from pi2i.data.events import fill_with_popular, to_iso, to_us
from pi2i.ibs.i2i import I2IIndex
from pi2i.layout import POPULARITY_FILE
from pi2i.online.history import HistoryStore, InMemoryHistoryStore, load_histories
from pi2i.publish import registry as reg

log = logging.getLogger("pi2i.online.runtime")

INT64_MAX = 2**63 - 1
TS_MIN_US = to_us(DataConfig().min_ts)  # an event before data.min_ts is refused, as the loader quarantines it


class ServingError(Exception):
    """A request that cannot be answered as asked; ``status`` is the HTTP status the adapter should use."""

    status = 400
    retry_after: float | None = None

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(ServingError):
    status = 404


class Conflict(ServingError):
    """The request is well-formed but contradicts the state (an event older than the kept history)."""

    status = 409


class Overloaded(ServingError):
    """Load shed: try again after ``retry_after`` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ServingError):
    status = 503


# --------------------------------------------------------------------------------------------------- ranking

@dataclass
class Ranked:
    """One user's ranked list with, per item, why: source items (triggers / first hops) and contributions."""

    items: np.ndarray  # int64, best first
    scores: np.ndarray  # float32
    why_items: list[np.ndarray]  # int64 per item, strongest first
    why_weights: list[np.ndarray]  # float32 per item
    num_candidates: int


class Ranker(Protocol):
    method: str

    def rank(self, items: np.ndarray, ts: np.ndarray, k: int, exclude_seen: bool) -> Ranked: ...


class ScorerRanker:
    """A PI2I model dir without ``method.json``: the PRS Scorer (the scoring path shared with evaluation)."""

    method = "pi2i"

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    def rank(self, items: np.ndarray, ts: np.ndarray, k: int, exclude_seen: bool) -> Ranked:
        r = self.scorer.recommend(items, ts, k, exclude=np.unique(items) if exclude_seen else None)
        trig = [np.asarray(t, np.int64) for t in r.triggers]
        return Ranked(np.asarray(r.items, np.int64), np.asarray(r.scores, np.float32), trig,
                      [np.zeros(len(t), np.float32) for t in trig], int(r.num_candidates))


class MethodRanker:
    """Any :class:`pi2i.methods.base.Retriever`, asked for per-item explanations."""

    def __init__(self, method: str, retriever: Any) -> None:
        self.method, self.retriever = method, retriever

    def rank(self, items: np.ndarray, ts: np.ndarray, k: int, exclude_seen: bool) -> Ranked:
        from pi2i.methods.base import PAD, Histories

        r = self.retriever.recommend(Histories.from_lists([(items, ts)]), k, exclude_seen=exclude_seen,
                                     explain=True)
        row = np.asarray(r.items[0], np.int64)
        keep = row != PAD
        why = (r.why[0] if r.why else None) or [[] for _ in range(len(row))]
        why = [w for w, kept in zip(why, keep) if kept]
        n_cand = int(r.num_candidates[0]) if r.num_candidates is not None else 0
        return Ranked(row[keep], np.asarray(r.scores[0], np.float32)[keep],
                      [np.asarray([s for s, _ in w], np.int64) for w in why],
                      [np.asarray([c for _, c in w], np.float32) for w in why], n_cand)


def load_ranker(model_dir: str, i2i: I2IIndex) -> Ranker:
    """The model dir's method (``method.json``) through the Retriever interface, else the PI2I Scorer."""
    try:
        from pi2i.methods import load_method, read_manifest
        from pi2i.methods.base import METHOD_FILE, TrainInputs
    except ImportError as e:  # the methods package is not importable: serve PI2I model dirs only
        log.warning("pi2i.methods unavailable (%s): serving through the PI2I Scorer", e)
    else:
        if exists(join(model_dir, METHOD_FILE)):
            from pi2i.config import parse_config

            manifest = read_manifest(model_dir)
            conf = manifest.get("config")
            cfg = parse_config(conf if isinstance(conf, dict) else None)
            return MethodRanker(manifest["method"], load_method(model_dir, TrainInputs(i2i=i2i), cfg))
    from pi2i.prs.scoring import Scorer

    return ScorerRanker(Scorer.load(model_dir, i2i))


# --------------------------------------------------------------------------------------------------- live version

@dataclass
class LoadedVersion:
    """Everything one registry version needs to answer requests, loaded and verified."""

    version: str
    path: str
    ranker: Ranker
    i2i: I2IIndex
    popularity: np.ndarray  # item ids, most popular first
    catalog: np.ndarray  # sorted item ids the version knows (i2i triggers and targets, items, popularity)
    histories: pa.Table | None
    cache_key: bytes  # HMAC key of this version's cache entries
    metrics: dict[str, Any] = field(default_factory=dict)
    history: HistoryStore | None = None  # the history view served with this version (set at swap)
    loaded_at: float = field(default_factory=time.time)
    load_s: float = 0.0

    @property
    def method(self) -> str:
        return self.ranker.method

    def knows(self, item_id: int) -> bool:
        pos = int(np.searchsorted(self.catalog, item_id))
        return pos < len(self.catalog) and int(self.catalog[pos]) == item_id

    def knows_all(self, items: np.ndarray) -> bool:
        if not len(items):
            return True
        pos = np.minimum(np.searchsorted(self.catalog, items), len(self.catalog) - 1)
        return bool(len(self.catalog)) and bool(np.all(self.catalog[pos] == items))


def version_cache_key(registry: str, version: str) -> bytes:
    """Per-version HMAC key: from ``PI2I_CACHE_SECRET`` (a k8s Secret) when set, else from the version's
    MANIFEST (stops a Redis-only attacker; not one who can also read the registry)."""
    secret = os.environ.get("PI2I_CACHE_SECRET", "").encode()
    if not secret:
        manifest = join(reg.version_path(registry, version), reg.MANIFEST_FILE)
        secret = repr(read_json(manifest)).encode() if exists(manifest) else b""
    return hmac.new(secret, b"pi2i-cache:" + version.encode(), hashlib.sha256).digest()


def load_version(registry: str, version: str, verify: bool = True) -> LoadedVersion:
    """Verify (sha256 manifest), load the i2i index and the method, and warm them with one inference."""
    t0 = time.perf_counter()
    if verify:
        reg.verify(registry, version)
    vpath = reg.version_path(registry, version)
    i2i = I2IIndex.load(join(vpath, reg.I2I_FILE))
    model_dir = join(vpath, reg.MODEL_DIR)
    ranker = load_ranker(model_dir, i2i)
    popularity = _popularity(model_dir, i2i)
    parts = [i2i.triggers, i2i.targets, popularity]
    items_uri = join(model_dir, ITEMS_FILE)
    if exists(items_uri):
        parts.append(read_parquet(items_uri, columns=["item_id"]).column("item_id").to_numpy().astype(np.int64))
    catalog = np.unique(np.concatenate(parts))
    metrics_uri = join(vpath, reg.METRICS_FILE)
    metrics = read_json(metrics_uri) if exists(metrics_uri) else {}
    lv = LoadedVersion(version, vpath, ranker, i2i, popularity, catalog, load_histories(model_dir),
                       version_cache_key(registry, version), metrics)
    if len(i2i.triggers):  # first inference pays lazy init (torch, numba): pay it before going live
        probe = i2i.triggers[:3]
        ranker.rank(probe, np.arange(len(probe), dtype=np.int64) * 1_000_000 + 1_700_000_000_000_000, 10, True)
    fill_with_popular(np.empty(0, np.int64), popularity[:2], 1, popularity[:1])  # the fallback path's kernel too
    lv.load_s = time.perf_counter() - t0
    return lv


def _popularity(model_dir: str, i2i: I2IIndex) -> np.ndarray:
    """The model dir's popularity list, else items by how many i2i rows hold them (a proxy every version has)."""
    uri = join(model_dir, POPULARITY_FILE)
    if exists(uri):
        return read_parquet(uri, columns=["item_id"]).column("item_id").to_numpy().astype(np.int64)
    ids, counts = np.unique(i2i.targets, return_counts=True)
    return ids[np.lexsort((ids, -counts))].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------- cache

class CacheCorrupt(ValueError):
    """A cached value that does not decode, does not authenticate, or names items the version lacks."""


@dataclass
class CachedRec:
    """One cached top-K: arrays, not objects, so a large cache stays compact."""

    fp: int  # fingerprint of the history it was computed from
    items: np.ndarray  # int64
    scores: np.ndarray  # float32
    trig_indptr: np.ndarray  # int64, len(items)+1: why of item i is trig_flat[indptr[i]:indptr[i+1]]
    trig_flat: np.ndarray  # int64 source items, strongest first
    trig_weight: np.ndarray  # float32 contributions, aligned with trig_flat
    num_candidates: int
    num_personalized: int  # items[:num_personalized] are the method's ranking (PI2I's holds the popular items its
    # popularity channel merged in, without triggers), the rest is the popularity fill
    computed_at: float

    _MAGIC = b"P2C2"
    _HDR = struct.Struct("<QqqqqdI")
    _TAG = 32  # sha256 HMAC

    def to_bytes(self, key: bytes) -> bytes:
        body = self._HDR.pack(self.fp, len(self.items), len(self.trig_flat), self.num_candidates,
                              self.num_personalized, self.computed_at, 0) + \
            self.items.astype("<i8").tobytes() + self.scores.astype("<f4").tobytes() + \
            self.trig_indptr.astype("<i8").tobytes() + self.trig_flat.astype("<i8").tobytes() + \
            self.trig_weight.astype("<f4").tobytes()
        return self._MAGIC + hmac.new(key, body, hashlib.sha256).digest() + body

    @classmethod
    def from_bytes(cls, b: bytes, key: bytes) -> CachedRec:
        """Decode and authenticate; :class:`CacheCorrupt` for anything but an intact value signed with ``key``."""
        m, t = len(cls._MAGIC), cls._TAG
        if len(b) < m + t + cls._HDR.size or b[:m] != cls._MAGIC:
            raise CacheCorrupt("not a pi2i cache value")
        body = b[m + t:]
        if not hmac.compare_digest(b[m:m + t], hmac.new(key, body, hashlib.sha256).digest()):
            raise CacheCorrupt("cache value fails authentication")
        fp, n, nt, nc, npers, at, _ = cls._HDR.unpack_from(body)
        o = cls._HDR.size
        if not (0 <= n <= 1_000_000 and 0 <= nt <= 100_000_000 and 0 <= npers <= n) or \
                len(body) != o + 8 * n + 4 * n + 8 * (n + 1) + 12 * nt:
            raise CacheCorrupt("cache value has inconsistent sizes")
        items = np.frombuffer(body, "<i8", n, o); o += 8 * n
        scores = np.frombuffer(body, "<f4", n, o); o += 4 * n
        indptr = np.frombuffer(body, "<i8", n + 1, o); o += 8 * (n + 1)
        flat = np.frombuffer(body, "<i8", nt, o); o += 8 * nt
        weight = np.frombuffer(body, "<f4", nt, o)
        if indptr[0] != 0 or indptr[-1] != nt or np.any(np.diff(indptr) < 0):
            raise CacheCorrupt("cache value has a bad explanation index")
        return cls(fp, items, scores, indptr, flat, weight, nc, npers, at)

    def answer(self, k: int) -> dict[str, Any]:
        k = min(k, len(self.items))
        ip = self.trig_indptr.tolist()
        flat, w = self.trig_flat.tolist(), self.trig_weight.tolist()
        return {"items": self.items[:k].tolist(), "scores": self.scores[:k].tolist(),
                "triggers": [flat[ip[i]:ip[i + 1]] for i in range(k)],
                "trigger_weights": [w[ip[i]:ip[i + 1]] for i in range(k)],
                "num_candidates": self.num_candidates, "num_personalized": min(self.num_personalized, k)}


class Cache(Protocol):
    kind: str

    def get(self, key: str, sign_key: bytes) -> CachedRec | None: ...

    def set(self, key: str, value: CachedRec, sign_key: bytes) -> None: ...

    def info(self) -> dict[str, Any]: ...


class LRUCache:
    """In-process LRU with a TTL (the embedded default); holds objects, so nothing to decode or forge."""

    kind = "memory"

    def __init__(self, maxsize: int = 50_000, ttl_s: float = 3600) -> None:
        self.maxsize, self.ttl_s = int(maxsize), float(ttl_s)
        self._d: OrderedDict[str, tuple[float, CachedRec]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, sign_key: bytes = b"") -> CachedRec | None:
        with self._lock:
            hit = self._d.get(key)
            if hit is None:
                return None
            if self.ttl_s and time.time() - hit[0] > self.ttl_s:
                del self._d[key]
                return None
            self._d.move_to_end(key)
            return hit[1]

    def set(self, key: str, value: CachedRec, sign_key: bytes = b"") -> None:
        with self._lock:
            self._d[key] = (time.time(), value)
            self._d.move_to_end(key)
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "entries": len(self._d), "healthy": True}


class RedisCache:
    """Redis-backed cache shared by replicas. Never raises: a failure is logged, counted, and Redis is skipped
    for ``retry_s`` so requests are computed instead of waiting on timeouts. Values are HMAC-signed with the
    version's key; a value that does not decode or authenticate is a miss (recomputed and overwritten)."""

    kind = "redis"

    def __init__(self, url: str, ttl_s: float = 3600, timeout_s: float = 0.05, retry_s: float = 2.0,
                 password: str | None = None) -> None:
        import redis

        self.url, self.ttl_s, self.retry_s = url, int(ttl_s), float(retry_s)
        self._r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                       **({"password": password} if password else {}))
        self._errors = (redis.RedisError, OSError)
        self._down_until = 0.0
        self.failures = 0
        self.rejected = 0  # values that failed to decode or authenticate
        self.last_failure: str | None = None

    def _fail(self, e: Exception) -> None:
        self.failures += 1
        self.last_failure = type(e).__name__
        self._down_until = time.monotonic() + self.retry_s
        log.warning("redis cache unavailable (%s); computing without cache for %.1fs", e, self.retry_s)

    def get(self, key: str, sign_key: bytes) -> CachedRec | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            raw = self._r.get(key)
        except self._errors as e:
            self._fail(e)
            return None
        if not raw:
            return None
        try:
            return CachedRec.from_bytes(bytes(raw), sign_key)  # type: ignore[arg-type]
        except (CacheCorrupt, ValueError, struct.error) as e:
            self.rejected += 1
            log.warning("ignoring cache value %s: %s", key, e)
            return None

    def set(self, key: str, value: CachedRec, sign_key: bytes) -> None:
        if time.monotonic() < self._down_until:
            return
        try:
            self._r.set(key, value.to_bytes(sign_key), ex=self.ttl_s or None)
        except self._errors as e:
            self._fail(e)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "healthy": time.monotonic() >= self._down_until,
                "failures": self.failures, "rejected": self.rejected, "last_failure": self.last_failure}


def make_cache(cfg: ServingConfig) -> Cache:
    """Redis when ``serving.redis_url`` is set (password from ``REDIS_PASSWORD``), else the in-process LRU."""
    if cfg.redis_url:
        return RedisCache(cfg.redis_url, cfg.cache_ttl_s, cfg.redis_timeout_s, cfg.redis_retry_s,
                          password=os.environ.get("REDIS_PASSWORD") or None)
    return LRUCache(cfg.cache_size, cfg.cache_ttl_s)


def fingerprint(items: np.ndarray, ts: np.ndarray) -> int:
    """Identity of a history: a cached result is fresh only if computed from the same one."""
    return zlib.crc32(ts.astype(np.int64).tobytes(), zlib.crc32(items.astype(np.int64).tobytes()))


# ------------------------------------------------------------------------------------------------- recommender

class OnlineRecommender:
    """The live version + history store + cache + nearline recompute. Thread-safe.

    ``on_answer(source)`` is called once per answered recommendation (the service's one request counter);
    ``observe(path, seconds)`` times computes and click-to-cache recomputes."""

    def __init__(self, registry: str, cfg: ServingConfig | None = None, history: HistoryStore | None = None,
                 cache: Cache | None = None, verify: bool = True,
                 observe: Callable[[str, float], None] | None = None,
                 on_answer: Callable[[str], None] | None = None) -> None:
        self.registry = str(registry)
        self.cfg = cfg or ServingConfig()
        self.verify = verify
        self.cache: Cache = cache if cache is not None else make_cache(self.cfg)
        self._own_history = history is None  # seeded from each version's histories, sharing online clicks
        self.history: HistoryStore = history if history is not None else InMemoryHistoryStore(
            max_len=self.cfg.history_len, max_users=self.cfg.online_users_max)
        self._observe = observe or (lambda name, seconds: None)
        self._on_answer = on_answer or (lambda source: None)
        self._live: LoadedVersion | None = None
        self._reload_lock = threading.Lock()
        self._pending: dict[int, str] = {}  # user -> queued | running | dirty (a click arrived while running)
        self._pending_lock = threading.Lock()
        self._landed = threading.Condition(self._pending_lock)  # notified when a user's recompute finishes
        self._nearline = ThreadPoolExecutor(self.cfg.nearline_workers, thread_name_prefix="pi2i-nearline")
        self._active: OrderedDict[int, None] = OrderedDict()  # recently served users, pre-warmed on swap
        self._active_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.fallback: dict[str, Any] | None = None  # set while serving a start-up fallback version
        self.last_error: dict[str, Any] | None = None
        self.last_reload: dict[str, Any] | None = None
        self.shed = 0  # events refused with 429
        self.nearline_errors = 0

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

    def start(self) -> dict[str, Any]:
        """Load the version to serve at start-up: CURRENT, or the newest verified version in HISTORY when CURRENT
        is corrupt or fails to verify (``registry.resolve_serving_version``); a fallback is reported by
        :meth:`info` until CURRENT is usable again."""
        try:
            choice = reg.resolve_serving_version(self.registry)
        except Exception as e:  # noqa: BLE001 - unreadable registry: stay not-ready, keep polling
            return self._failed(None, f"cannot read registry: {type(e).__name__}: {e}")
        if choice.version is None:
            return self._note({"status": "empty", "version": None, "error": choice.reason})
        res = self.reload(choice.version)
        if res["status"] == "swapped" and choice.fallback:
            self.fallback = {"version": choice.version, "current": choice.current, "reason": choice.reason}
            log.warning("serving fallback version %s: %s", choice.version, choice.reason)
        return res

    def reload(self, version: str | None = None) -> dict[str, Any]:
        """Load ``version`` (default: the registry's CURRENT) beside the live one, pre-warm, and swap it in.

        Returns ``{"status": swapped|unchanged|failed|empty, "version", "previous", "error"?}``; never raises
        for a bad version (the old one keeps serving)."""
        with self._reload_lock:
            old = self._live
            try:
                target = version or reg.current(self.registry)
            except Exception as e:  # noqa: BLE001 - unreadable registry: keep serving
                return self._failed(None, f"cannot read registry CURRENT: {type(e).__name__}: {e}")
            if target is None:
                return self._note({"status": "empty", "version": old and old.version,
                                   "error": "the registry has no live version"})
            if old is not None and old.version == target:
                if version is None:
                    self.fallback = None
                return self._note({"status": "unchanged", "version": target})
            try:
                new = load_version(self.registry, target, verify=self.verify)
            except Exception as e:  # noqa: BLE001 - any failure to load leaves the old version serving
                log.error("refusing version %s: %s: %s (still serving %s)", target, type(e).__name__, e,
                          old and old.version)
                return self._failed(target, f"{type(e).__name__}: {e}")
            new.history = self.history.with_seed(new.histories) \
                if self._own_history and isinstance(self.history, InMemoryHistoryStore) else self.history
            warmed = self._prewarm(new)
            self._live = new  # the swap: one reference assignment; requests hold their own snapshot
            self.fallback = None
            if self.last_error and self.last_error.get("version") == new.version:
                self.last_error = None
            log.info("serving version %s (%s; was %s; loaded in %.2fs, %d users pre-warmed)", new.version,
                     new.method, old and old.version, new.load_s, warmed)
            return self._note({"status": "swapped", "version": new.version, "previous": old and old.version,
                               "method": new.method, "load_s": round(new.load_s, 3), "prewarmed": warmed})

    def _failed(self, version: str | None, err: str) -> dict[str, Any]:
        self.last_error = {"version": version, "error": err, "at": time.time()}
        old = self._live
        out = {"status": "failed", "version": old and old.version, "error": err}
        if version is not None:
            out["refused"] = version
        return self._note(out)

    def _note(self, result: dict[str, Any]) -> dict[str, Any]:
        self.last_reload = {**result, "at": time.time()}
        return result

    def _prewarm(self, new: LoadedVersion) -> int:
        """Compute the new version's cache entries for the most recently active users before it goes live, so
        the swap is not a cache stampede; bounded by ``prewarm_users`` and ``prewarm_s``."""
        if self.cfg.prewarm_users <= 0 or new.history is None:
            return 0
        with self._active_lock:
            users = list(reversed(self._active))[: self.cfg.prewarm_users]
        end, n = time.monotonic() + self.cfg.prewarm_s, 0
        for user in users:
            if time.monotonic() > end:
                break
            items, ts = new.history.get(user)
            if not len(items):
                continue
            try:
                rec = self._compute(new, items, ts, True, self.cfg.cache_k, fingerprint(items, ts))
            except Exception:  # a user that fails to warm is computed on its first request
                log.exception("pre-warm failed for user %s", user)
                continue
            if rec is not None:
                self.cache.set(self._key(new, user, True), rec, new.cache_key)
                n += 1
        return n

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
                if cur and cur == live:
                    self.fallback = None  # CURRENT is readable again and names what we serve
                elif cur and cur != refused:
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
            raise Unavailable("no live version loaded yet")
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

    def _history(self, v: LoadedVersion) -> HistoryStore:
        return v.history if v.history is not None else self.history

    def _touch(self, user_id: int) -> None:
        with self._active_lock:
            self._active[user_id] = None
            self._active.move_to_end(user_id)
            if len(self._active) > self.cfg.prewarm_users:
                self._active.popitem(last=False)

    def _fresh(self, v: LoadedVersion, key: str, fp: int, k: int) -> CachedRec | None:
        hit = self.cache.get(key, v.cache_key)
        if hit is None or hit.fp != fp or len(hit.items) < k:
            return None
        if self.cache.kind != "memory" and not v.knows_all(hit.items):  # a shared cache must never make us
            return None  # serve items this version lacks (in-process entries are this process's own)
        return hit

    def cached(self, user_id: int, k: int, exclude_seen: bool = True) -> dict[str, Any] | None:
        """The answer if the cache holds a fresh one, else None (cheap: no scoring, no waiting)."""
        v = self._snapshot()
        items, ts = self._history(v).get(user_id)
        if len(items) == 0:
            return None
        hit = self._fresh(v, self._key(v, user_id, exclude_seen), fingerprint(items, ts), k)
        if hit is None:
            return None
        self._touch(user_id)
        return self._wrap(v, user_id, "cache", hit.answer(k), len(items))

    def recommend(self, user_id: int, k: int, exclude_seen: bool = True) -> dict[str, Any]:
        """Top-k for a user: fresh cache entry, else inference (cached), else popularity fallback."""
        self.check_id("user_id", user_id)
        self.check_k(k)
        v = self._snapshot()
        items, ts = self._history(v).get(user_id)
        if len(items):
            self._touch(user_id)
            key = self._key(v, user_id, exclude_seen)
            fp = fingerprint(items, ts)
            hit = self._fresh(v, key, fp, k)
            if hit is None and exclude_seen and k <= self.cfg.cache_k and self._await_nearline(user_id):
                hit = self._fresh(v, key, fp, k)  # the click's own recompute just landed: don't compute twice
            if hit is not None:
                return self._wrap(v, user_id, "cache", hit.answer(k), len(items))
            t0 = time.perf_counter()
            rec = self._compute(v, items, ts, exclude_seen, max(k, self.cfg.cache_k), fp)
            self._observe("compute", time.perf_counter() - t0)
            if rec is not None:
                self.cache.set(key, rec, v.cache_key)
                return self._wrap(v, user_id, "computed", rec.answer(k), len(items))
        return self._wrap(v, user_id, "fallback", self._popular(v, items if exclude_seen else None, k), len(items))

    def _compute(self, v: LoadedVersion, items: np.ndarray, ts: np.ndarray, exclude_seen: bool, k: int,
                 fp: int) -> CachedRec | None:
        r = v.ranker.rank(items, ts, k, exclude_seen)
        n = len(r.items)
        if n == 0:
            return None
        out_items, scores = r.items, r.scores
        why_i, why_w = list(r.why_items), list(r.why_weights)
        if n < k:  # few candidates: fill the tail from popularity so the feed is never short
            out_items = fill_with_popular(out_items, v.popularity, k, items if exclude_seen else None)
            n_fill = len(out_items) - n
            scores = np.concatenate([scores, np.zeros(n_fill, np.float32)])
            why_i += [np.empty(0, np.int64)] * n_fill
            why_w += [np.empty(0, np.float32)] * n_fill
        lens = np.fromiter((len(t) for t in why_i), np.int64, len(why_i))
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = np.concatenate(why_i).astype(np.int64) if why_i else np.empty(0, np.int64)
        weight = np.concatenate(why_w).astype(np.float32) if why_w else np.empty(0, np.float32)
        return CachedRec(fp, out_items.astype(np.int64), scores.astype(np.float32), indptr, flat, weight,
                         r.num_candidates, n, time.time())

    @staticmethod
    def _popular(v: LoadedVersion, exclude: np.ndarray | None, k: int) -> dict[str, Any]:
        pop = fill_with_popular(np.empty(0, np.int64), v.popularity, k, exclude)
        return {"items": pop.tolist(), "scores": [0.0] * len(pop), "triggers": [[] for _ in range(len(pop))],
                "trigger_weights": [[] for _ in range(len(pop))], "num_candidates": 0, "num_personalized": 0}

    def _wrap(self, v: LoadedVersion, user_id: int, source: str, ans: dict[str, Any], history_len: int) -> dict:
        self._on_answer(source)
        return {"user_id": user_id, **ans, "version": v.version, "method": v.method, "source": source,
                "history_len": history_len}

    def record_event(self, user_id: int, item_id: int, ts_us: int | None = None) -> dict[str, Any]:
        """Append a click to the online history and schedule the nearline recompute of the user's top-K.

        Refused: an item the version lacks (404), a ts beyond ``max_clock_skew_s`` ahead of the server clock
        (400), a ts older than the user's kept window, which would never be seen (409), and a click for a new
        user while ``max_pending_recomputes`` users wait for their recompute (429, retry later)."""
        self.check_id("user_id", user_id)
        self.check_id("item_id", item_id)
        v = self._snapshot()
        if not self.cfg.accept_unknown_items and not v.knows(item_id):
            raise NotFound(f"item {item_id} is unknown to version {v.version}")
        now = time.time_ns() // 1000
        if ts_us is None:
            ts_us = now
        elif ts_us > now + int(self.cfg.max_clock_skew_s * 1_000_000):
            raise ServingError(f"ts {ts_us} is {(ts_us - now) / 1e6:.0f} s ahead of the server clock (at most "
                               f"serving.max_clock_skew_s={self.cfg.max_clock_skew_s:g} s): not recorded")
        store = self._history(v)
        items, ts = store.get(user_id)
        if len(items) >= self.cfg.history_len and ts_us < ts[0]:
            raise Conflict(f"ts {ts_us} is older than the {len(items)} clicks kept for user {user_id} "
                           f"(oldest kept: {int(ts[0])}): it would never be used, not recorded")
        with self._pending_lock:
            if user_id not in self._pending and len(self._pending) >= self.cfg.max_pending_recomputes:
                self.shed += 1
                raise Overloaded(f"{len(self._pending)} recomputes pending (serving.max_pending_recomputes); "
                                 "retry later", retry_after=self.cfg.retry_after_s)
        store.append(user_id, item_id, int(ts_us))
        with self._pending_lock:
            state = self._pending.get(user_id)
            if state is None:
                self._pending[user_id] = "queued"
            elif state == "running":
                self._pending[user_id] = "dirty"  # runs once more after the current pass: clicks coalesce
        if state is None:
            self._nearline.submit(self._nearline_run, user_id, time.perf_counter())
        return {"user_id": user_id, "item_id": item_id, "ts": int(ts_us), "version": v.version,
                "recompute": "scheduled" if state is None else "coalesced"}

    def _nearline_run(self, user_id: int, t_click: float) -> None:
        while True:
            with self._pending_lock:
                self._pending[user_id] = "running"
            try:
                v = self._snapshot()
                items, ts = self._history(v).get(user_id)
                fp = fingerprint(items, ts)
                key = self._key(v, user_id, True)
                if len(items) and self._fresh(v, key, fp, self.cfg.cache_k) is None:
                    rec = self._compute(v, items, ts, True, self.cfg.cache_k, fp)
                    if rec is not None:
                        self.cache.set(key, rec, v.cache_key)
                self._observe("nearline", time.perf_counter() - t_click)
            except Exception:  # a failed recompute only costs a cache miss later
                self.nearline_errors += 1
                log.exception("nearline recompute failed for user %s", user_id)
            with self._pending_lock:
                if self._pending.get(user_id) != "dirty":
                    self._pending.pop(user_id, None)
                    self._landed.notify_all()
                    return

    def _await_nearline(self, user_id: int) -> bool:
        """Wait up to ``nearline_wait_s`` for this user's *running* recompute; True if it finished. A recompute
        still queued behind others is not waited for: computing now is faster."""
        if self.cfg.nearline_wait_s <= 0:
            return False
        end = time.monotonic() + self.cfg.nearline_wait_s
        with self._landed:
            if self._pending.get(user_id) not in ("running", "dirty"):
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

    def info(self, detail: bool = False) -> dict[str, Any]:
        """What ``/version`` shows: public fields, plus registry and error internals when ``detail``."""
        v = self._live
        out: dict[str, Any] = {
            "version": v and v.version, "method": v and v.method, "ready": v is not None,
            "loaded_at": v and v.loaded_at, "source": "fallback" if self.fallback else "current",
            "gate": (v.metrics.get("gate") if v and isinstance(v.metrics, dict) else None),
            "cache": {"kind": self.cache.kind}, "nearline_pending": self.pending(),
        }
        if not detail:
            return out
        try:
            cur = reg.current(self.registry)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            cur = f"unreadable: {e}"
        hist = self.history
        return {**out, "registry": self.registry, "registry_current": cur, "load_s": v and round(v.load_s, 3),
                "fallback": self.fallback, "last_error": self.last_error, "last_reload": self.last_reload,
                "cache": self.cache.info(), "history_store": type(hist).__name__,
                "online_users": hist.online_users() if isinstance(hist, InMemoryHistoryStore) else None,
                "events_shed": self.shed, "nearline_errors": self.nearline_errors}


def make_history_store(cfg: ServingConfig, feature_repo: str | None) -> HistoryStore | None:
    """Feast-backed store when a feature repo is given, else None (the recommender seeds an in-memory one)."""
    if not feature_repo:
        return None
    from pi2i.data.features import FeastHistoryStore

    return FeastHistoryStore(feature_repo)


def parse_ts(value: int | str | None) -> int | None:
    """Event time in µs since epoch from an int (µs) or an ISO-8601 string; ServingError if bad or before
    ``data.min_ts`` (a ts too far ahead is refused by :meth:`OnlineRecommender.record_event`)."""
    if value is None:
        return None
    try:
        us = to_us(value)
    except (TypeError, ValueError) as e:
        raise ServingError(f"ts: {e}") from None
    if us < TS_MIN_US:
        raise ServingError(f"ts {value!r} is before data.min_ts {to_iso(TS_MIN_US)} "
                           "(ts is microseconds since epoch or ISO-8601)")
    return us
