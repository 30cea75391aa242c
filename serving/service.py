"""PI2I online service (BentoML 1.4): a thin HTTP adapter over ``pi2i.online.runtime.OnlineRecommender``.

Run: ``pi2i serve --registry R --port P`` (or ``PI2I_REGISTRY=R bentoml serve serving.service:PI2IService``).
Environment: ``PI2I_REGISTRY`` (required), ``PI2I_CONFIG`` (YAML, the ``serving`` section is used),
``PI2I_REDIS_URL`` and ``REDIS_PASSWORD``, ``PI2I_FEATURE_REPO`` (Feast-backed histories), and the tokens
``PI2I_ADMIN_TOKEN`` (``/admin/reload``, full ``/version``), ``PI2I_WRITE_TOKEN`` (``/events``; default: the admin
token), ``PI2I_READ_TOKEN`` (reads, when ``serving.read_auth``), sent as ``Authorization: Bearer <token>``.

Endpoints: ``POST /recommend``, ``POST /events`` (202), ``POST /similar``, ``POST /admin/reload``,
``GET /version``, plus BentoML's ``/livez``, ``/readyz``, ``/metrics`` and the OpenAPI document ``/docs.json``,
which is the contract: strict JSON bodies (unknown fields, wrong types, ``"no"`` for a bool: 400), every error
``{"error": str, "detail"?: str}`` with the statuses it declares.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
from http import HTTPStatus
from typing import Annotated, Any, NoReturn, cast

import anyio
import anyio.to_thread
import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typing_extensions import TypedDict

from pi2i.config import ServingConfig, load_config
from pi2i.online.runtime import (
    INT64_MAX,
    TS_MIN_US,
    OnlineRecommender,
    ServingError,
    make_history_store,
    parse_ts,
)

log = logging.getLogger("pi2i.serving")


def _serving_config() -> ServingConfig:
    cfg = load_config(os.environ.get("PI2I_CONFIG") or None).serving
    if os.environ.get("PI2I_REDIS_URL"):
        cfg = cfg.model_copy(update={"redis_url": os.environ["PI2I_REDIS_URL"]})
    return cfg


CFG = _serving_config()  # configuration only (the request schema's limits); the service holds all state
# In-process cache and histories are per process: several workers need shared state (Redis + Feast).
WORKERS = CFG.workers if CFG.redis_url and os.environ.get("PI2I_FEATURE_REPO") else 1


# ------------------------------------------------------------------------------------------------ errors

class PI2IError(BentoMLException):
    """A request the service refuses; ``error_code`` is the HTTP status."""

    error_code = HTTPStatus.BAD_REQUEST


class NotFoundError(PI2IError):
    error_code = HTTPStatus.NOT_FOUND


class ConflictError(PI2IError):
    error_code = HTTPStatus.CONFLICT


class TooManyRequests(PI2IError):
    error_code = HTTPStatus.TOO_MANY_REQUESTS


class NotReady(PI2IError):
    error_code = HTTPStatus.SERVICE_UNAVAILABLE


_BY_STATUS: dict[int, type[PI2IError]] = {c.error_code.value: c for c in
                                          (PI2IError, NotFoundError, ConflictError, TooManyRequests, NotReady)}


def _raise(e: ServingError) -> NoReturn:
    raise _BY_STATUS.get(e.status, PI2IError)(str(e)) from None


# ------------------------------------------------------------------------------------------------ schema

Id = Annotated[int, Field(ge=0, le=INT64_MAX, description="int64 id")]
K = Annotated[int, Field(ge=1, le=CFG.max_k, description=f"list length, 1..serving.max_k ({CFG.max_k})")]
Ts = Annotated[int, Field(ge=TS_MIN_US, le=INT64_MAX, description="event time, microseconds since the epoch")]
IsoTs = Annotated[str, Field(min_length=1, max_length=64, description="event time, ISO-8601 (UTC if no offset)")]


class _Body(bentoml.IODescriptor):
    model_config = ConfigDict(extra="forbid", strict=True)  # the schema is the contract: nothing coerced


class RecommendRequest(_Body):
    user_id: Id
    k: K = 20
    exclude_seen: bool = True


class EventRequest(_Body):
    user_id: Id
    item_id: Id
    ts: Ts | IsoTs | None = Field(None, description="µs since epoch or ISO-8601; default: now. At most "
                                  "serving.max_clock_skew_s ahead; older than the user's kept history: 409")


class SimilarRequest(_Body):
    item_id: Id
    k: K = 20


class ReloadRequest(_Body):
    pass


class Recommendation(TypedDict):
    user_id: int
    items: list[int]
    scores: list[float]
    triggers: list[list[int]]  # per item, the history items that produced it, strongest first ([] = a popular
    # item: PI2I's popularity channel or the fill)
    trigger_weights: list[list[float]]  # their contributions (0 when the method reports none)
    num_candidates: int
    num_personalized: int  # items[:n] are the method's ranking, the rest is the popularity fill
    version: str
    method: str
    source: str  # cache | computed | fallback
    history_len: int


class EventAccepted(TypedDict):
    user_id: int
    item_id: int
    ts: int
    version: str
    recompute: str  # scheduled | coalesced


class SimilarItems(TypedDict):
    item_id: int
    items: list[int]
    scores: list[float]
    ranks: list[int]
    version: str


class ReloadResult(TypedDict, total=False):
    status: str  # swapped | unchanged | failed | empty
    version: str | None
    previous: str | None
    refused: str
    method: str
    load_s: float
    prewarmed: int
    error: str


# ------------------------------------------------------------------------------------------------ metrics

_ANSWERS = bentoml.metrics.Counter(name="pi2i_recommend_total", documentation="recommendations by source",
                                   labelnames=["source"])
_LATENCY = bentoml.metrics.Histogram(
    name="pi2i_inference_seconds", documentation="inference (compute) and click-to-cache (nearline) time",
    labelnames=["path"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0))
_SWAPS = bentoml.metrics.Counter(name="pi2i_reload_total", documentation="reload attempts by outcome",
                                 labelnames=["status"])
_FALLBACK = bentoml.metrics.Gauge(name="pi2i_serving_fallback", multiprocess_mode="max",
                                  documentation="1 while serving a start-up fallback (CURRENT unusable)")


# ------------------------------------------------------------------------------------------------ service

@bentoml.service(
    name="pi2i",
    # no BentoML max_concurrency: it would count requests whose body is still arriving (slow clients would
    # starve real ones); serving.Guard admits requests after their body is read (serving.max_concurrency)
    traffic={"timeout": 30},
    workers=WORKERS,
    logging={"access": {"enabled": False}},
    # the hot endpoints skip per-request OpenTelemetry spans (~0.5 ms each here); counters stay in /metrics
    tracing={"excluded_urls": ["/recommend", "/events", "/similar"]},
)
class PI2IService:
    """Loads the live registry version at startup (or the newest verified one when CURRENT is corrupt);
    hot-swaps on /admin/reload or when CURRENT changes."""

    def __init__(self) -> None:
        registry = os.environ.get("PI2I_REGISTRY")
        if not registry:
            raise RuntimeError("PI2I_REGISTRY is not set (use: pi2i serve --registry R --port P)")
        history = make_history_store(CFG, os.environ.get("PI2I_FEATURE_REPO"))
        self.rec = OnlineRecommender(registry, CFG, history=history,
                                     observe=lambda path, s: _LATENCY.labels(path=path).observe(s),
                                     on_answer=lambda source: _ANSWERS.labels(source=source).inc())
        self._note_reload(self.rec.start())
        self.rec.start_polling()
        self._limiter = anyio.CapacityLimiter(4)  # inference threads (torch releases the GIL)
        gc.collect()
        gc.freeze()  # the loaded version's objects leave the collector's scans: shorter pauses in the p99 tail

    def _note_reload(self, res: dict[str, Any]) -> None:
        _SWAPS.labels(status=res["status"]).inc()
        _FALLBACK.set(1 if self.rec.fallback else 0)
        if res["status"] == "failed":
            log.error("reload failed: %s", res.get("error"))

    def __is_ready__(self) -> bool:
        return self.rec.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.rec.close()

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except ServingError as e:
            _raise(e)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, user_id: int, k: int = 20, exclude_seen: bool = True) -> Recommendation:
        """Top-k items for a user with scores, the triggers behind each, the version and the source."""
        if self.rec.inline_ok:  # in-process cache and history: the cached answer never leaves the event loop
            try:
                self.rec.check_k(k)
                out = self.rec.cached(user_id, k, exclude_seen)
            except ServingError as e:
                _raise(e)
            if out is not None:
                return out  # type: ignore[return-value]
        return await self._run(self.rec.recommend, user_id, k, exclude_seen)

    @bentoml.api(route="/events", input_spec=EventRequest)
    async def events(self, user_id: int, item_id: int, ctx: bentoml.Context, ts: int | str | None = None
                     ) -> EventAccepted:
        """Record a click and schedule the nearline recompute of the user's recommendations (202)."""
        try:
            ts_us = parse_ts(ts)
            if self.rec.inline_ok:
                out = self.rec.record_event(user_id, item_id, ts_us)
            else:
                out = await self._run(self.rec.record_event, user_id, item_id, ts_us)
        except ServingError as e:
            _raise(e)
        ctx.response.status_code = HTTPStatus.ACCEPTED
        return out  # type: ignore[return-value]

    @bentoml.api(route="/similar", input_spec=SimilarRequest)
    async def similar(self, item_id: int, k: int = 20) -> SimilarItems:
        """The raw Swing i2i row of an item."""
        try:
            return self.rec.similar(item_id, k)  # type: ignore[return-value]
        except ServingError as e:
            _raise(e)

    @bentoml.api(route="/admin/reload", input_spec=ReloadRequest)
    async def reload(self, ctx: bentoml.Context) -> ReloadResult:
        """Load the registry's CURRENT beside the live version and swap it in; 409 when it is refused."""
        res = await self._run(self.rec.reload)
        self._note_reload(res)
        if res["status"] in ("failed", "empty"):
            ctx.response.status_code = HTTPStatus.CONFLICT
        return cast(ReloadResult, res)


async def _version(request: Request) -> JSONResponse:
    """Public: version, method, readiness, whether it is a fallback. With the admin token: registry internals."""
    try:
        svc = bentoml.get_current_service()
    except BentoMLException:
        return JSONResponse({"error": "service not initialised"}, status_code=503)
    detail = _bearer(request.headers.get("authorization")) in Tokens().admin
    return JSONResponse(svc.rec.info(detail=detail))


SERVICE = cast("bentoml.Service[PI2IService]", PI2IService)  # what @bentoml.service made of the class
SERVICE.mount_asgi_app(Starlette(routes=[Route("/version", _version, methods=["GET"])]), path="/")


# ------------------------------------------------------------------------------------------------ the guard

class Tokens:
    """Bearer tokens from the environment (a k8s Secret); an unset token makes its endpoints refuse everyone."""

    def __init__(self) -> None:
        admin = os.environ.get("PI2I_ADMIN_TOKEN") or ""
        write = os.environ.get("PI2I_WRITE_TOKEN") or admin
        read = os.environ.get("PI2I_READ_TOKEN") or ""
        self.admin = _TokenSet([admin])
        self.write = _TokenSet([write, admin])
        self.read = _TokenSet([read, write, admin])


class _TokenSet:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    def __contains__(self, given: bytes | None) -> bool:
        # constant time per token; every token is compared (no early exit that would tell which one matched)
        return bool(given) and sum(hmac.compare_digest(given, t) for t in self._tokens) > 0  # type: ignore[arg-type]


def _bearer(header: str | bytes | None) -> bytes | None:
    if not header:
        return None
    raw = header.encode("latin-1") if isinstance(header, str) else header
    scheme, _, token = raw.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


ADMIN_PATHS = ("/admin/",)
WRITE_PATHS = ("/events",)
READ_PATHS = ("/recommend", "/similar", "/metrics", "/version")
_NOT_JSON = (b"multipart/form-data", b"application/x-www-form-urlencoded", b"application/vnd.bentoml+pickle")


class Guard:
    """ASGI middleware in front of every endpoint. In order: token auth by path (401 before any body is read);
    POST bodies JSON only (415) and at most ``max_body_bytes`` (413); the body read under a deadline
    (``body_timeout_s``: a client that trickles its body gets 408 and holds no request slot meanwhile) with at
    most ``max_body_readers`` bodies in flight (503); then admission (``max_concurrency`` requests being
    answered, else 429 + Retry-After). Every error leaves as ``{"error": str, "detail"?: str}`` — BentoML's
    validation errors, its own 404/405s included — and ``/docs.json`` declares what the service answers."""

    def __init__(self, app: Any, cfg: ServingConfig) -> None:
        self.app, self.cfg = app, cfg
        self.tokens = Tokens()
        self.readers = 0
        self.inflight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope.get("path", "")
        headers = dict(scope.get("headers", ()))
        refused = self._auth(path, _bearer(headers.get(b"authorization")))
        if refused:
            return await _reply(send, 401, refused, {"www-authenticate": 'Bearer realm="pi2i"'})
        if path == "/docs.json":
            return await self.app(scope, receive, _patch_openapi(send))
        if scope.get("method") != "POST":
            return await self.app(scope, receive, _json_errors(send))
        body = await self._read_body(headers, receive, send)
        if body is None:
            return None
        if self.inflight >= self.cfg.max_concurrency:
            return await _reply(send, 429, f"{self.inflight} requests in progress (serving.max_concurrency); "
                                "retry later", {"retry-after": _secs(self.cfg.retry_after_s)})
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        self.inflight += 1
        try:
            await self.app(scope, replay, _json_errors(send, self.cfg.retry_after_s))
        finally:
            self.inflight -= 1

    def _auth(self, path: str, token: bytes | None) -> str | None:
        if path.startswith(ADMIN_PATHS):
            need, name = self.tokens.admin, "the admin token (PI2I_ADMIN_TOKEN)"
        elif path.startswith(WRITE_PATHS):
            need, name = self.tokens.write, "a write token (PI2I_WRITE_TOKEN)"
        elif self.cfg.read_auth and path.startswith(READ_PATHS):
            need, name = self.tokens.read, "a read token (PI2I_READ_TOKEN)"
        else:
            return None
        return None if token in need else f"{path} needs {name} as 'Authorization: Bearer <token>'"

    async def _read_body(self, headers: dict[bytes, bytes], receive: Any, send: Any) -> bytes | None:
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype in _NOT_JSON:
            await _reply(send, 415, f"unsupported Content-Type {ctype.decode(errors='replace')}; "
                         "send application/json")
            return None
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(send, 400, "bad Content-Length header")
                return None
            if int(declared) > self.cfg.max_body_bytes:
                await _reply(send, 413, f"request body above {self.cfg.max_body_bytes} bytes")
                return None
        if self.readers >= self.cfg.max_body_readers:
            await _reply(send, 503, "too many request bodies in flight; retry later",
                         {"retry-after": _secs(self.cfg.retry_after_s)})
            return None
        chunks: list[bytes] = []
        size = 0
        self.readers += 1
        try:
            async with asyncio.timeout(self.cfg.body_timeout_s):  # lighter than an anyio cancel scope
                more = True
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return None
                    chunks.append(msg.get("body", b""))
                    size += len(chunks[-1])
                    more = msg.get("more_body", False)
                    if size > self.cfg.max_body_bytes:
                        await _reply(send, 413, f"request body above {self.cfg.max_body_bytes} bytes")
                        return None
        except TimeoutError:
            await _reply(send, 408, f"request body not received within {self.cfg.body_timeout_s:g} s",
                         {"connection": "close"})
            return None
        finally:
            self.readers -= 1
        return b"".join(chunks)


def _secs(s: float) -> str:
    return str(max(1, round(s)))


async def _reply(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def _error_body(status: int, raw: bytes) -> dict[str, Any]:
    """One error shape for everything: BentoML's validation errors (a list ``detail``), its 4xx exceptions (a
    one-element list), Starlette's plain-text 404/405."""
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("detail"), list):  # pydantic errors -> one line
        msgs = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', '')}"
                for e in data["detail"] if isinstance(e, dict)]
        return {"error": "; ".join(msgs) or str(data.get("error")), "detail": str(data.get("error", ""))}
    if isinstance(data, dict) and isinstance(data.get("error"), str):  # ours: kept (e.g. a refused reload)
        if data.get("detail") is not None:
            data["detail"] = str(data["detail"])
        return data
    text = raw.decode(errors="replace").strip() if raw else ""
    return {"error": text or HTTPStatus(status).phrase}


def _json_errors(send: Any, retry_after_s: float = 1.0) -> Any:
    """Wrap ``send``: error responses (>= 400) are buffered and re-emitted in the one error shape; 429/503 carry
    Retry-After. Successful responses stream through untouched."""
    state: dict[str, Any] = {}

    async def wrapped(msg: Any) -> None:
        if msg["type"] == "http.response.start":
            if msg["status"] < 400:
                state["pass"] = True
                return await send(msg)
            state.update(start=msg, chunks=[])
            return None
        if state.get("pass") or "start" not in state:
            return await send(msg)
        state["chunks"].append(msg.get("body", b""))
        if msg.get("more_body"):
            return None
        start = state["start"]
        body = json.dumps(_error_body(start["status"], b"".join(state["chunks"]))).encode()
        keep = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        keep += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if start["status"] in (429, 503) and not any(k.lower() == b"retry-after" for k, _ in keep):
            keep.append((b"retry-after", _secs(retry_after_s).encode()))
        await send({**start, "headers": keep})
        await send({"type": "http.response.body", "body": body})

    return wrapped


_DECLARED = {  # statuses each route may answer besides 200; the OpenAPI document lists them
    "/recommend": (400, 401, 408, 413, 415, 429, 503),
    "/events": (400, 401, 404, 408, 409, 413, 415, 429, 503),
    "/similar": (400, 401, 404, 408, 413, 415, 429, 503),
    "/admin/reload": (400, 401, 408, 409, 413, 415, 429, 503),
}


def _patch_openapi(send: Any) -> Any:
    """Wrap ``send`` for ``/docs.json``: declare every status the adapter answers (BentoML lists 400/404/500
    only), the error shape for each, and 202 for ``/events``."""
    state: dict[str, Any] = {"chunks": []}

    async def wrapped(msg: Any) -> None:
        if msg["type"] == "http.response.start":
            state["start"] = msg
            return
        state["chunks"].append(msg.get("body", b""))
        if msg.get("more_body"):
            return
        raw = b"".join(state["chunks"])
        try:
            doc = json.loads(raw)
            _declare(doc)
            raw = json.dumps(doc).encode()
        except (ValueError, KeyError, TypeError) as e:
            log.warning("OpenAPI document left as generated: %s", e)
        start = state["start"]
        hdrs = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*hdrs, (b"content-length", str(len(raw)).encode())]})
        await send({"type": "http.response.body", "body": raw})

    return wrapped


def _declare(doc: dict[str, Any]) -> None:
    error_ref = {"$ref": "#/components/schemas/InvalidArgument"}
    for path, statuses in _DECLARED.items():
        op = doc["paths"][path]["post"]
        responses = op["responses"]
        responses.pop("500", None)  # never answered by design; a 500 is a bug that schemathesis should flag
        for s in statuses:
            responses.setdefault(str(s), {"description": HTTPStatus(s).phrase,
                                          "content": {"application/json": {"schema": error_ref}}})
        if path == "/events":
            responses["202"] = responses.pop("200")
        if path in ("/admin/reload", "/events") or CFG.read_auth:
            op["security"] = [{"bearer": []}]
    doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer"}


class _OneLineClientErrors(logging.Filter):
    """BentoML logs every refused request with a traceback; a client error or a refusal of ours (404, 409, 429,
    503 not ready) is one line, without it. Anything else keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        client = isinstance(exc, (ValidationError, PI2IError)) or (
            isinstance(exc, BentoMLException) and exc.error_code.value < 500)
        if client:
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: " + str(exc).replace("\n", " ")[:300]
            record.args = None
            record.exc_info, record.levelno, record.levelname = None, logging.INFO, "INFO"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_OneLineClientErrors())
SERVICE.add_asgi_middleware(Guard, cfg=CFG)
# BentoML 1.4 derives a plain-value output's media type from its JSON schema, rebuilt on every response (~4 ms
# for these TypedDicts): declare it once instead.
for _api in SERVICE.apis.values():
    _api.output_spec.media_type = "application/json"
