"""PI2I online service (BentoML 1.4): a thin HTTP adapter over ``pi2i.online.runtime.OnlineRecommender``.

Run: ``pi2i serve --registry R --port P`` (or ``PI2I_REGISTRY=R bentoml serve serving.service:PI2IService``).
Environment: ``PI2I_REGISTRY`` (required), ``PI2I_CONFIG`` (YAML, the ``serving`` section is used),
``PI2I_REDIS_URL``, ``PI2I_FEATURE_REPO`` (Feast-backed histories).

Endpoints: ``POST /recommend``, ``POST /events``, ``POST /similar``, ``POST /admin/reload``, ``GET /version``,
plus BentoML's ``/livez``, ``/readyz``, ``/metrics``. Client errors are 4xx JSON ``{"error": message}``.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import anyio
import anyio.to_thread
import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pi2i.config import ServingConfig, load_config
from pi2i.online.runtime import INT64_MAX, OnlineRecommender, ServingError, make_history_store, parse_ts

log = logging.getLogger("pi2i.serving")


def _serving_config() -> ServingConfig:
    cfg = load_config(os.environ.get("PI2I_CONFIG") or None).serving
    if os.environ.get("PI2I_REDIS_URL"):
        cfg = cfg.model_copy(update={"redis_url": os.environ["PI2I_REDIS_URL"]})
    return cfg


CFG = _serving_config()
# In-process cache and histories are per process: several workers need shared state (Redis + Feast).
WORKERS = CFG.workers if CFG.redis_url and os.environ.get("PI2I_FEATURE_REPO") else 1
if WORKERS != CFG.workers:
    log.warning("serving.workers=%d needs redis_url and --feature-repo; running 1 worker", CFG.workers)

Id = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX, description="int64 id")]
K = Annotated[int, Field(strict=True, ge=1, le=1_000_000, description=f"1..serving.max_k ({CFG.max_k})")]

_REQUESTS = bentoml.metrics.Counter(name="pi2i_recommend_total", documentation="answers by source",
                                    labelnames=["source"])
_LATENCY = bentoml.metrics.Histogram(
    name="pi2i_inference_seconds", documentation="PRS inference (compute) and click-to-cache (nearline) time",
    labelnames=["path"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0))
_SWAPS = bentoml.metrics.Counter(name="pi2i_reload_total", documentation="reload attempts by outcome",
                                 labelnames=["status"])


def _error(e: ServingError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.status)


_NOT_JSON = (b"multipart/form-data", b"application/x-www-form-urlencoded", b"application/vnd.bentoml+pickle")


class RequestGuard:
    """ASGI middleware for POSTs: JSON bodies only (415), at most ``max_bytes`` (413, declared or streamed).

    The body is read here (it is small) and replayed to the app, so an oversized chunked upload is refused
    before BentoML parses anything."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype in _NOT_JSON:
            return await _reply(scope, receive, send, 415,
                                f"unsupported Content-Type {ctype.decode(errors='replace')}; send application/json")
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reply(scope, receive, send, 400, "bad Content-Length header")
            if int(declared) > self.max_bytes:
                return await _reply(scope, receive, send, 413, f"request body above {self.max_bytes} bytes")
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.max_bytes:
                return await _reply(scope, receive, send, 413, f"request body above {self.max_bytes} bytes")
        body, replayed = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _reply(scope: Any, receive: Any, send: Any, status: int, message: str) -> None:
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


_LIVE: dict[str, Any] = {}  # the service instance, for the plain Starlette routes below


async def _version(_: Request) -> Response:
    svc = _LIVE.get("svc")
    if svc is None:
        return JSONResponse({"error": "service not initialised"}, status_code=503)
    return JSONResponse(svc.rec.info())


_extra = Starlette(routes=[Route("/version", _version, methods=["GET"])])


@bentoml.asgi_app(_extra, path="/")
@bentoml.service(
    name="pi2i",
    traffic={"timeout": 30, "max_concurrency": 256},
    workers=WORKERS,
    logging={"access": {"enabled": False}},
    # the hot endpoints skip per-request OpenTelemetry spans (~0.5 ms each here); counters stay in /metrics
    tracing={"excluded_urls": ["/recommend", "/events", "/similar"]},
)
class PI2IService:
    """Loads the live registry version at startup; hot-swaps on /admin/reload or when CURRENT changes."""

    def __init__(self) -> None:
        registry = os.environ.get("PI2I_REGISTRY")
        if not registry:
            raise RuntimeError("PI2I_REGISTRY is not set (use: pi2i serve --registry R --port P)")
        history = make_history_store(CFG, os.environ.get("PI2I_FEATURE_REPO"))
        self.rec = OnlineRecommender(registry, CFG, history=history,
                                     observe=lambda path, s: _LATENCY.labels(path=path).observe(s))
        res = self.rec.reload()
        _SWAPS.labels(status=res["status"]).inc()
        if res["status"] != "swapped":
            log.error("no version loaded at startup: %s", res.get("error"))
        self.rec.start_polling()
        self._limiter = anyio.CapacityLimiter(4)  # inference threads (torch releases the GIL)
        _LIVE["svc"] = self

    def __is_ready__(self) -> bool:
        return self.rec.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.rec.close()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    @bentoml.api(route="/recommend")
    async def recommend(self, user_id: Id, k: K = 20, exclude_seen: bool = True) -> dict[str, Any]:
        """Top-k items for a user with scores, the triggers behind each, the version and the source."""
        try:
            self.rec.check_k(k)
            out = self.rec.cached(user_id, k, exclude_seen) if self.rec.inline_ok else None
            if out is None:  # inference (or non-local cache/history I/O) runs off the event loop
                out = await self._run(self.rec.recommend, user_id, k, exclude_seen)
        except ServingError as e:
            return _error(e)
        _REQUESTS.labels(source=out["source"]).inc()
        return JSONResponse(out)

    @bentoml.api(route="/events")
    async def events(self, user_id: Id, item_id: Id, ts: Annotated[int, Field(strict=True)] | str | None = None
                     ) -> dict[str, Any]:
        """Record a click (``ts``: µs since epoch or ISO-8601; default now) and schedule the nearline recompute."""
        try:
            ts_us = parse_ts(ts)
            if self.rec.inline_ok:
                out = self.rec.record_event(user_id, item_id, ts_us)
            else:
                out = await self._run(self.rec.record_event, user_id, item_id, ts_us)
        except ServingError as e:
            return _error(e)
        return JSONResponse(out, status_code=202)

    @bentoml.api(route="/similar")
    async def similar(self, item_id: Id, k: K = 20) -> dict[str, Any]:
        """The raw Swing i2i row of an item."""
        try:
            return JSONResponse(self.rec.similar(item_id, k))
        except ServingError as e:
            return _error(e)

    @bentoml.api(route="/admin/reload")
    async def reload(self) -> dict[str, Any]:
        """Load the registry's CURRENT beside the live version and swap it in; 409 when it is refused."""
        res = await self._run(self.rec.reload)
        _SWAPS.labels(status=res["status"]).inc()
        return JSONResponse(res, status_code=409 if res["status"] in ("failed", "empty") else 200)


PI2IService.add_asgi_middleware(RequestGuard, max_bytes=CFG.max_body_bytes)
