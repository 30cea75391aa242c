"""Serving against a real ``pi2i serve`` (BentoML) process on 127.0.0.1, with a real trained model.

Covers every endpoint, every bad-input kind, hot swap under concurrent load with zero failures, a corrupted
version refused while the old one keeps serving, the registry poll, and Redis (Debian ``redis-server``)
stopped mid-run. Plus unit tests of the history store and the cache codec.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pi2i.online.history import InMemoryHistoryStore
from pi2i.publish import registry as reg

PI2I = str(Path(sys.executable).parent / "pi2i")
START_TIMEOUT_S = 90
ADMIN, WRITE = "test-admin-token", "test-write-token"
AS_ADMIN = {"authorization": f"Bearer {ADMIN}"}
AS_WRITER = {"authorization": f"Bearer {WRITE}"}


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def built(tiny_chain: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shared tiny chain (conftest: data -> split -> Swing -> samples -> 1 short epoch, a real model dir),
    a passing gate verdict, and a user with a seed history (its items)."""
    from pi2i.layout import HISTORIES_FILE

    root = tmp_path_factory.mktemp("serving-model")  # this module's own files; the chain stays read-only
    (root / "metrics.json").write_text(json.dumps({"gate": {"passed": True, "reason": "fixture"}}))
    hist = pq.read_table(Path(tiny_chain["model"]) / HISTORIES_FILE)
    return {"root": str(root), "data": tiny_chain["data"], "i2i": tiny_chain["i2i"], "model": tiny_chain["model"],
            "metrics": str(root / "metrics.json"),
            "warm_user": int(hist.column("user_id")[0].as_py()),
            "warm_items": hist.column("items")[0].as_py()}


def _variant_metrics(built: dict, tag: str) -> str:
    """A metrics file that differs per tag: same model, a distinct version id (content hash)."""
    p = Path(built["root"]) / f"metrics-{tag}.json"
    p.write_text(json.dumps({"gate": {"passed": True, "reason": tag}}))
    return str(p)


class Server:
    """``pi2i serve`` in its own process group, stopped with SIGTERM (then SIGKILL) at teardown."""

    def __init__(self, registry: str, cfg_path: Path, log_path: Path, port: int, redis_url: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [PI2I, "serve", "--registry", registry, "--port", str(self.port), "--config", str(cfg_path)]
        if redis_url:
            argv += ["--redis-url", redis_url]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - held for the server's lifetime
        env = {**os.environ, "PI2I_ADMIN_TOKEN": ADMIN, "PI2I_WRITE_TOKEN": WRITE, **(env or {})}
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not ready; log:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def post(self, path: str, body: object | None = None, auth: bool = True, **kw) -> httpx.Response:
        """POST as a client with the right token for the path (``auth=False``: without any)."""
        if auth and "headers" not in kw:
            kw["headers"] = AS_ADMIN if path.startswith("/admin") else AS_WRITER if path == "/events" else {}
        return self.client.post(path, json=body, **kw) if body is not None else self.client.post(path, **kw)

    def version(self, detail: bool = True) -> dict:
        return self.client.get("/version", headers=AS_ADMIN if detail else {}).json()


def _config(tmp: Path, **serving) -> Path:
    p = tmp / "serving.yaml"
    p.write_text(yaml.safe_dump({"serving": {"poll_s": 0.5, "max_k": 200, "cache_k": 50, **serving}}))
    return p


@pytest.fixture(scope="module")
def env(built, tmp_path_factory: pytest.TempPathFactory, free_ports):
    tmp = tmp_path_factory.mktemp("serving")
    registry = str(tmp / "registry")
    v1 = reg.publish(registry, built["i2i"], built["model"], built["metrics"])
    srv = Server(registry, _config(tmp, body_timeout_s=2.0, max_pending_recomputes=4), tmp / "server.log",
                 free_ports())
    try:
        srv.wait_ready()
        yield {"srv": srv, "registry": registry, "v1": v1, "built": built, "tmp": tmp}
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ endpoints

def test_probes_version_metrics(env) -> None:
    s = env["srv"]
    assert s.client.get("/livez").status_code == 200
    assert s.client.get("/readyz").status_code == 200
    v = s.version()
    assert v["version"] == env["v1"] and v["ready"] and v["registry_current"] == env["v1"]
    assert v["gate"] == {"passed": True, "reason": "fixture"} and v["cache"]["kind"] == "memory"
    s.post("/recommend", {"user_id": env["built"]["warm_user"], "k": 5})
    m = s.client.get("/metrics").text
    assert "pi2i_recommend_total" in m and "pi2i_inference_seconds" in m


def test_recommend_computed_then_cache_and_fallback(env) -> None:
    s, b = env["srv"], env["built"]
    user, seen = b["warm_user"], set(b["warm_items"])
    r1 = s.post("/recommend", {"user_id": user, "k": 10})
    assert r1.status_code == 200, r1.text
    a = r1.json()
    assert a["source"] in ("computed", "cache") and a["version"] == env["v1"]
    assert len(a["items"]) == len(a["scores"]) == len(a["triggers"]) == 10
    assert not seen & set(a["items"])  # seen items excluded by default
    assert all(set(t) <= seen for t in a["triggers"][: a["num_personalized"]])  # triggers come from the history
    assert a["num_personalized"] > 0 and any(len(t) for t in a["triggers"][: a["num_personalized"]])
    r2 = s.post("/recommend", {"user_id": user, "k": 5}).json()
    assert r2["source"] == "cache" and r2["items"] == a["items"][:5]
    r3 = s.post("/recommend", {"user_id": user, "k": 10, "exclude_seen": False}).json()
    assert r3["source"] in ("computed", "cache") and len(r3["items"]) == 10
    cold = s.post("/recommend", {"user_id": 10**12, "k": 7}).json()
    assert cold["source"] == "fallback" and len(cold["items"]) == 7 and cold["triggers"] == [[]] * 7
    assert s.post("/recommend", {"user_id": user}).json()["items"][:5] == a["items"][:5]  # default k = 20


def test_events_nearline_refreshes_cache(env) -> None:
    s, b = env["srv"], env["built"]
    user = 7_000_001  # a new user: cold, then personalised by one click
    assert s.post("/recommend", {"user_id": user, "k": 5}).json()["source"] == "fallback"
    item = int(pq.read_table(b["i2i"]).column("trigger")[0].as_py())
    t0 = time.perf_counter()
    r = s.post("/events", {"user_id": user, "item_id": item})
    assert r.status_code == 202 and r.json()["recompute"] == "scheduled"
    deadline = time.monotonic() + 10
    while True:  # the nearline recompute lands in the cache: the next read is a cache hit
        out = s.post("/recommend", {"user_id": user, "k": 5}).json()
        if out["source"] == "cache" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert out["source"] == "cache", out
    assert out["history_len"] == 1 and item not in out["items"]
    # the pool's items are explained by the click; popular items the ranking merged in carry no trigger
    assert all(t in ([item], []) for t in out["triggers"][: out["num_personalized"]])
    assert any(t == [item] for t in out["triggers"])
    assert time.perf_counter() - t0 < 10
    # an ISO time (a late click: lands in time order) is accepted; the history grows, so the entry is stale
    yesterday = datetime.fromtimestamp(time.time() - 86_400, UTC).isoformat()
    assert s.post("/events", {"user_id": user, "item_id": item, "ts": yesterday}).status_code == 202
    out2 = s.post("/recommend", {"user_id": user, "k": 5}).json()
    assert out2["history_len"] == 2


def test_similar_is_the_raw_i2i_row(env) -> None:
    s, b = env["srv"], env["built"]
    t = pq.read_table(b["i2i"]).to_pandas()
    item = int(t.trigger.iloc[0])
    row = t[t.trigger == item].sort_values("rank").head(8)
    out = s.post("/similar", {"item_id": item, "k": 8}).json()
    assert out["items"] == row.target.tolist() and out["ranks"] == row["rank"].tolist()
    assert np.allclose(out["scores"], row.score.to_numpy(), rtol=1e-6)


BAD = [
    ("malformed json", "/recommend", b'{"user_id": 1,', {}, 400),
    ("not an object", "/recommend", b"[1, 2]", {}, 400),
    ("empty body", "/recommend", b"", {}, 400),
    ("binary body", "/recommend", b"\xff\xfe\x00\x01", {}, 400),
    ("missing user_id", "/recommend", b'{"k": 5}', {}, 400),
    ("string user_id", "/recommend", b'{"user_id": "12"}', {}, 400),
    ("float user_id", "/recommend", b'{"user_id": 1.5}', {}, 400),
    ("bool user_id", "/recommend", b'{"user_id": true}', {}, 400),
    ("null user_id", "/recommend", b'{"user_id": null}', {}, 400),
    ("negative user_id", "/recommend", b'{"user_id": -3}', {}, 400),
    ("user_id above int64", "/recommend", b'{"user_id": 99999999999999999999999}', {}, 400),
    ("zero k", "/recommend", b'{"user_id": 1, "k": 0}', {}, 400),
    ("negative k", "/recommend", b'{"user_id": 1, "k": -5}', {}, 400),
    ("k above max_k", "/recommend", b'{"user_id": 1, "k": 201}', {}, 400),
    ("huge k", "/recommend", b'{"user_id": 1, "k": 10000000000}', {}, 400),
    ("string k", "/recommend", b'{"user_id": 1, "k": "5"}', {}, 400),
    ("bad exclude_seen", "/recommend", b'{"user_id": 1, "exclude_seen": "maybe"}', {}, 400),
    ("events missing item", "/events", b'{"user_id": 1}', {}, 400),
    ("events unknown item", "/events", b'{"user_id": 1, "item_id": 987654321}', {}, 404),
    ("events bad ts string", "/events", b'{"user_id": 1, "item_id": 1, "ts": "yesterday"}', {}, 400),
    ("events ts out of range", "/events", b'{"user_id": 1, "item_id": 1, "ts": 5}', {}, 400),
    ("events float ts", "/events", b'{"user_id": 1, "item_id": 1, "ts": 1.5}', {}, 400),
    ("similar unknown item", "/similar", b'{"item_id": 987654321, "k": 3}', {}, 404),
    ("similar negative k", "/similar", b'{"item_id": 1, "k": -1}', {}, 400),
    ("similar k above max_k", "/similar", b'{"item_id": 1, "k": 100000}', {}, 400),
    ("form body", "/recommend", b"user_id=1", {"content-type": "application/x-www-form-urlencoded"}, 415),
    ("multipart garbage", "/recommend", b"garbage", {"content-type": "multipart/form-data"}, 415),
    ("pickle", "/recommend", b"x", {"content-type": "application/vnd.bentoml+pickle"}, 415),
    ("unknown field", "/recommend", b'{"user_id": 1, "kk": 5}', {}, 400),
    ("exclude_seen as a string", "/recommend", b'{"user_id": 1, "exclude_seen": "no"}', {}, 400),
    ("exclude_seen as an int", "/recommend", b'{"user_id": 1, "exclude_seen": 0}', {}, 400),
    ("events unknown field", "/events", b'{"user_id": 1, "item_id": 1, "when": 5}', {}, 400),
    ("events ts in 2099", "/events", b'{"user_id": 1, "item_id": 1, "ts": 4085000000000000}', {}, 400),
    ("events ISO ts in 2099", "/events", b'{"user_id": 1, "item_id": 1, "ts": "2099-01-01T00:00:00Z"}', {}, 400),
    ("reload unknown field", "/admin/reload", b'{"force": true}', {}, 400),
    ("oversized body", "/recommend", b'{"user_id": 1, "pad": "' + b"x" * 100_000 + b'"}', {}, 413),
]


@pytest.mark.parametrize("name,path,body,headers,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_4xx_with_message(env, name, path, body, headers, status) -> None:
    token = AS_WRITER if path == "/events" else AS_ADMIN if path.startswith("/admin") else {}
    h = {"content-type": "application/json", **token, **headers}
    r = env["srv"].client.post(path, content=body, headers=h)
    assert r.status_code == status, (name, r.status_code, r.text)
    body = r.json()  # one error shape, as the OpenAPI document declares it: strings only
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"]
    assert isinstance(body.get("detail", ""), str)


def test_bad_transport_is_4xx(env) -> None:
    c = env["srv"].client

    def chunks():
        for _ in range(40):
            yield b"x" * 4096  # 160 KiB streamed without Content-Length

    r = c.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body above" in r.json()["error"]
    for r, code in ((c.get("/recommend"), 405), (c.post("/no-such-endpoint", json={}), 404)):
        assert r.status_code == code and r.headers["content-type"] == "application/json" and r.json()["error"]
    assert env["srv"].version()["ready"]  # none of the above hurt the server


# ------------------------------------------------------------------------------------------------ security

def test_auth_admin_write_and_public_version(env) -> None:
    s, b = env["srv"], env["built"]
    click = {"user_id": 7_100_000, "item_id": int(b["warm_items"][0])}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {ADMIN}"}, AS_WRITER):
        r = s.post("/admin/reload", headers=headers)
        assert r.status_code == 401 and "PI2I_ADMIN_TOKEN" in r.json()["error"], r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
    for headers in ({}, {"authorization": "Bearer wrong"}):
        assert s.post("/events", click, headers=headers).status_code == 401
    assert s.post("/events", click, headers=AS_WRITER).status_code == 202
    assert s.post("/events", click, headers=AS_ADMIN).status_code == 202  # the admin token may write too
    assert s.post("/admin/reload").status_code == 200
    public = s.version(detail=False)
    assert public["ready"] and public["version"] and public["source"] == "current"
    text = json.dumps(public)
    assert env["registry"] not in text and "registry" not in public and "last_error" not in public
    assert s.version(detail=True)["registry"] == env["registry"]
    # reads are open by default (serving.read_auth=false)
    assert s.post("/recommend", {"user_id": 1, "k": 3}, auth=False).status_code == 200


def test_slow_bodies_do_not_starve_real_requests(env) -> None:
    """300 connections each send headers and 1 byte of a 100-byte body, then stall: real requests still get
    200 at once, and the stalled ones get 408 after serving.body_timeout_s (2 s here)."""
    s = env["srv"]
    slow = []
    for _ in range(300):
        c = socket.create_connection(("127.0.0.1", s.port))
        c.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        slow.append(c)
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        with httpx.Client(base_url=s.url, timeout=10) as c:
            codes = [c.post("/recommend", json={"user_id": env["built"]["warm_user"], "k": 5}).status_code
                     for _ in range(20)]
        assert codes == [200] * 20 and time.monotonic() - t0 < 1.5, codes
        time.sleep(2.5)
        answered = 0
        for c in slow:
            c.settimeout(5)
            head = c.recv(200)
            answered += head.startswith(b"HTTP/1.1 408")
        assert answered == 300
    finally:
        for c in slow:
            c.close()


def test_events_bounded_and_ts_checked(env) -> None:
    s, b = env["srv"], env["built"]
    item = int(b["warm_items"][0])
    now_us = time.time_ns() // 1000
    far = s.post("/events", {"user_id": 7_200_000, "item_id": item, "ts": now_us + 3_600_000_000})
    assert far.status_code == 400 and "ahead of the server clock" in far.json()["error"]
    # a full window (history_len=50 clicks) refuses a click older than all of them, with a clear answer
    user = 7_200_001
    for i in range(50):
        assert s.post("/events", {"user_id": user, "item_id": item, "ts": now_us - 1000 + i}).status_code == 202
    old = s.post("/events", {"user_id": user, "item_id": item, "ts": now_us - 10**9})
    assert old.status_code == 409 and "older than the 50 clicks kept" in old.json()["error"]
    # clicks of one user coalesce into one recompute; many users at once are shed with 429 + Retry-After
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def burst(i: int) -> None:
        with httpx.Client(base_url=s.url, timeout=10, headers=AS_WRITER) as c:
            for j in range(10):
                r = c.post("/events", json={"user_id": 7_300_000 + 10 * i + j, "item_id": item})
                with lock:
                    answers.append(r)

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [r.status_code for r in answers]
    assert set(codes) <= {202, 429} and 429 in codes and 202 in codes, codes
    shed = next(r for r in answers if r.status_code == 429)
    assert int(shed.headers["retry-after"]) >= 1 and "retry later" in shed.json()["error"]
    assert s.version()["nearline_pending"] <= 4  # serving.max_pending_recomputes
    same = [s.post("/events", {"user_id": 7_400_000, "item_id": item}).json().get("recompute") for _ in range(5)]
    assert same[0] in ("scheduled", "coalesced") and "coalesced" in same[1:] or same.count("scheduled") <= 5


def test_openapi_is_the_contract(env) -> None:
    s = env["srv"]
    doc = s.client.get("/docs.json").json()
    req = doc["components"]["schemas"]
    rec = req["RecommendRequest"]
    assert rec["properties"]["k"]["maximum"] == 200 == yaml.safe_load(
        (env["tmp"] / "serving.yaml").read_text())["serving"]["max_k"]
    assert rec.get("additionalProperties") is False and rec["properties"]["exclude_seen"]["type"] == "boolean"
    ts = req["EventRequest"]["properties"]["ts"]
    assert {a.get("type") for a in ts["anyOf"]} == {"integer", "string", "null"}
    events = doc["paths"]["/events"]["post"]["responses"]
    assert "202" in events and "200" not in events and {"401", "409", "429"} <= set(events)
    err = doc["components"]["schemas"]["InvalidArgument"]["properties"]
    assert err["error"]["type"] == err["detail"]["type"] == "string"
    # a refused request is logged on one line, without a traceback
    s.post("/recommend", {"user_id": "not-an-int"})
    time.sleep(0.3)
    assert "Traceback" not in s.log_path.read_text()


@pytest.mark.slow
def test_schemathesis_conformance(env) -> None:
    """Schema-generated requests (seeded, bounded) against the live server: no 5xx, every status, content
    type and body as the OpenAPI document declares, schema-invalid requests rejected."""
    st = Path(sys.executable).parent / "st"
    if not st.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    s = env["srv"]
    checks = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
              "negative_data_rejection")
    r = subprocess.run([str(st), "run", f"{s.url}/docs.json", "--url", s.url, "--max-examples", "100",
                        "--seed", "7", "--checks", checks, "--header", f"Authorization: Bearer {ADMIN}",
                        "--workers", "2", "--no-color", "--request-timeout", "20"],
                       check=False, capture_output=True, text=True, timeout=240)
    print(r.stdout[-3000:])  # the summary: operations, test cases, checks
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", r.stdout)
    assert cases and int(cases[1]) == int(cases[2]) >= 400, r.stdout[-3000:]


def test_read_auth_when_configured(built, tmp_path: Path, free_port: int) -> None:
    """serving.read_auth: reads need PI2I_READ_TOKEN (or the write/admin token); probes stay open."""
    registry = str(tmp_path / "registry")
    reg.publish(registry, built["i2i"], built["model"], built["metrics"])
    srv = Server(registry, _config(tmp_path, poll_s=0, read_auth=True), tmp_path / "server.log", free_port,
                 env={"PI2I_READ_TOKEN": "reader"})
    try:
        srv.wait_ready()
        c = srv.client
        assert c.get("/livez").status_code == 200 and c.get("/readyz").status_code == 200
        for path in ("/recommend", "/similar"):
            assert c.post(path, json={"user_id": 1, "item_id": 1}).status_code == 401
        assert c.get("/metrics").status_code == 401 and c.get("/version").status_code == 401
        for token in ("reader", WRITE, ADMIN):
            h = {"authorization": f"Bearer {token}"}
            assert c.post("/recommend", json={"user_id": 1, "k": 3}, headers=h).status_code == 200
            assert c.get("/metrics", headers=h).status_code == 200
        assert "registry" not in c.get("/version", headers={"authorization": "Bearer reader"}).json()
        assert c.post("/events", json={"user_id": 1, "item_id": 1},
                      headers={"authorization": "Bearer reader"}).status_code == 401
    finally:
        srv.stop()


def test_startup_falls_back_when_current_is_corrupt(built, tmp_path: Path, free_port: int) -> None:
    """A fresh instance whose CURRENT is corrupt serves the newest verified version in HISTORY, and says so."""
    registry = str(tmp_path / "registry")
    v1 = reg.publish(registry, built["i2i"], built["model"], built["metrics"])
    Path(registry, reg.CURRENT_FILE).write_bytes(b"\x00\xffnot a version\n")
    srv = Server(registry, _config(tmp_path, poll_s=0), tmp_path / "server.log", free_port)
    try:
        srv.wait_ready()
        public = srv.version(detail=False)
        assert public["version"] == v1 and public["source"] == "fallback"
        assert srv.version()["fallback"]["version"] == v1 and "CURRENT" in srv.version()["fallback"]["reason"]
        assert re.search(r"^pi2i_serving_fallback(\{[^}]*\})? 1\.0$", srv.client.get("/metrics").text, re.MULTILINE)
        assert srv.post("/recommend", {"user_id": built["warm_user"], "k": 3}).json()["version"] == v1
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ hot swap

def test_hot_swap_under_load_zero_failures(env) -> None:
    s, b, registry = env["srv"], env["built"], env["registry"]
    start_version = s.version()["version"]
    v2 = reg.publish(registry, b["i2i"], b["model"], _variant_metrics(b, "v2"))
    users = [b["warm_user"], 10**12, 7_000_001, 1, 2, 3]
    results: list[tuple[int, str | None, float]] = []
    lock, stop = threading.Lock(), threading.Event()

    def hammer(i: int) -> None:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            j = 0
            while not stop.is_set():
                t_sent = time.monotonic()
                r = c.post("/recommend", json={"user_id": users[(i + j) % len(users)], "k": 10})
                ver = r.json().get("version") if r.status_code == 200 else None
                with lock:
                    results.append((r.status_code, ver, t_sent))
                j += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    reg.promote(registry, v2)
    rr = s.post("/admin/reload")
    swapped_at = time.monotonic()
    # no stampede: the users served before the swap were pre-computed for v2 before it went live
    warm = s.post("/recommend", {"user_id": b["warm_user"], "k": 10}).json()
    assert warm["version"] == v2 and warm["source"] == "cache", warm
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert rr.status_code == 200 and rr.json()["status"] in ("swapped", "unchanged"), rr.text  # poll may win
    codes = [c for c, _, _ in results]
    assert len(results) > 30 and codes.count(200) == len(codes), {c: codes.count(c) for c in set(codes)}
    assert {v for _, v, _ in results} <= {start_version, v2}
    assert all(v == v2 for _, v, t in results if t > swapped_at)  # every request sent after the swap is new
    assert s.version()["version"] == v2


def test_corrupted_version_refused_old_keeps_serving(env) -> None:
    s, b, registry = env["srv"], env["built"], env["registry"]
    live = s.version()["version"]
    bad = reg.publish(registry, b["i2i"], b["model"], _variant_metrics(b, "corrupt"))
    w = next(Path(reg.version_path(registry, bad), "model").glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[:-8] + b"\x00" * 8)
    reg.promote(registry, bad, check=False)  # as if CURRENT were flipped by a broken rollout
    r = s.post("/admin/reload")
    assert r.status_code == 409 and r.json()["refused"] == bad and "checksum mismatch" in r.json()["error"]
    v = s.version()
    assert v["version"] == live and v["last_error"]["version"] == bad and v["registry_current"] == bad
    rec = s.post("/recommend", {"user_id": b["warm_user"], "k": 5})
    assert rec.status_code == 200 and rec.json()["version"] == live
    time.sleep(1.2)  # the poll does not retry the refused version in a loop, nor swap it in
    assert s.version()["version"] == live
    # the registry poll picks up a good CURRENT without /admin/reload
    reg.promote(registry, env["v1"])
    deadline = time.monotonic() + 10
    while s.version()["version"] != env["v1"] and time.monotonic() < deadline:
        time.sleep(0.1)
    v = s.version()
    assert v["version"] == env["v1"] and v["last_reload"]["status"] == "swapped"
    assert "corrupt" in str(s.log_path.read_text()) or "refusing version" in s.log_path.read_text()


# ------------------------------------------------------------------------------------------------ redis

@pytest.fixture()
def redis_server(tmp_path: Path, free_ports):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (Debian: apt-get install redis-server; `make test` does it)")
    port = free_ports()
    password = "redis-test-password"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path), "--requirepass", password],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    r = redis.Redis(port=port, password=password)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield {"url": f"redis://127.0.0.1:{port}/0", "client": r, "proc": proc, "password": password}
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def test_redis_cache_then_redis_killed(built, redis_server, tmp_path: Path, free_ports) -> None:
    registry = str(tmp_path / "registry")
    v1 = reg.publish(registry, built["i2i"], built["model"], built["metrics"])
    srv = Server(registry, _config(tmp_path, poll_s=0), tmp_path / "server.log", free_ports(),
                 redis_url=redis_server["url"],
                 env={"REDIS_PASSWORD": redis_server["password"]})  # Redis requires auth (a k8s Secret)
    try:
        srv.wait_ready()
        assert srv.version()["cache"]["kind"] == "redis"
        user = built["warm_user"]
        first = srv.post("/recommend", {"user_id": user, "k": 5}).json()
        assert first["source"] == "computed"
        assert srv.post("/recommend", {"user_id": user, "k": 5}).json()["source"] == "cache"
        keys = [k.decode() for k in redis_server["client"].keys("pi2i:*")]
        key = f"pi2i:{v1}:{user}:1"
        assert keys == [key]  # the key names the version
        # cache integrity: a malformed value and a forged one (valid layout, wrong signature) are recomputed
        good = redis_server["client"].get(key)
        forged = bytearray(good)
        forged[-200] ^= 0x55
        for bad in (b"\x00garbage", bytes(forged), good[:-3]):
            redis_server["client"].set(key, bad)
            r = srv.post("/recommend", {"user_id": user, "k": 5})
            assert r.status_code == 200 and r.json()["source"] == "computed", r.text
            assert r.json()["items"] == first["items"]
        assert srv.version()["cache"]["rejected"] == 3
        # a correctly signed value naming items the version does not know is not served either
        from pi2i.online.runtime import CachedRec, version_cache_key

        sign = version_cache_key(registry, v1)  # no PI2I_CACHE_SECRET: derived from the version's manifest
        ok = CachedRec.from_bytes(good, sign)
        evil = CachedRec(ok.fp, np.full_like(ok.items, 987_654_321), ok.scores, ok.trig_indptr, ok.trig_flat,
                         ok.trig_weight, ok.num_candidates, ok.num_personalized, ok.computed_at)
        redis_server["client"].set(key, evil.to_bytes(sign))
        r = srv.post("/recommend", {"user_id": user, "k": 5}).json()
        assert r["source"] == "computed" and r["items"] == first["items"]
        redis_server["proc"].kill()
        redis_server["proc"].wait(5)
        for i in range(5):
            r = srv.post("/recommend", {"user_id": user, "k": 5})
            assert r.status_code == 200 and r.json()["source"] == "computed", r.text
        assert srv.post("/events", {"user_id": user, "item_id": built["warm_items"][0]}).status_code == 202
        assert srv.post("/recommend", {"user_id": 10**12, "k": 3}).json()["source"] == "fallback"
        c = srv.version()["cache"]
        assert c["healthy"] is False and c["failures"] >= 1
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ units

def test_history_store_seed_append_with_seed_bounded() -> None:
    ts = pa.list_(pa.timestamp("us", tz="UTC"))
    seed = pa.table({"user_id": pa.array([5, 1], pa.int64()),
                     "items": pa.array([[10, 11], [20]], pa.list_(pa.int64())),
                     "ts": pa.array([[1, 2], [5]], pa.list_(pa.int64())).cast(ts)})
    h = InMemoryHistoryStore(seed, max_len=3, max_users=2)
    assert h.get(5)[0].tolist() == [10, 11] and h.get(1)[1].tolist() == [5]
    assert h.get(99)[0].tolist() == []
    h.append(5, 12, 4)
    h.append(5, 13, 3)  # late click: kept in time order
    assert h.get(5)[0].tolist() == [11, 13, 12]  # last max_len
    h.append(5, 9, 0)  # older than the seed's clicks: merged in time order (then cut to the last max_len)
    assert h.get(5)[1].tolist() == [2, 3, 4]
    h.append(99, 1, 7)
    assert h.get(99)[0].tolist() == [1]
    newer = pa.table({"user_id": pa.array([5], pa.int64()), "items": pa.array([[30, 13]], pa.list_(pa.int64())),
                      "ts": pa.array([[1, 3]], pa.list_(pa.int64())).cast(ts)})
    h2 = h.with_seed(newer)  # online clicks survive a swap; one the new seed holds (13 @ 3) counts once
    assert h2.get(5)[0].tolist() == [30, 13, 12] and h2.get(1)[0].tolist() == []
    h2.append(99, 2, 8)
    assert h.get(99)[0].tolist() == [1, 2]  # the overlay is shared by both views
    for u in range(100, 110):  # at most max_users users keep online clicks (LRU): memory is bounded
        h.append(u, 1, 1)
    assert h.online_users() == 2 and h.get(100)[0].tolist() == [] and h.get(109)[0].tolist() == [1]


def test_cached_rec_roundtrip_and_integrity() -> None:
    from pi2i.online.runtime import CacheCorrupt, CachedRec, fingerprint

    key = b"k" * 32
    c = CachedRec(fingerprint(np.array([1, 2]), np.array([3, 4])), np.array([7, 8, 9]),
                  np.array([0.5, 0.25, 0.0], np.float32), np.array([0, 2, 3, 3]), np.array([1, 2, 2]),
                  np.array([0.75, 0.25, 1.0], np.float32), 40, 2, 1.5)
    raw = c.to_bytes(key)
    d = CachedRec.from_bytes(raw, key)
    assert d.answer(2) == c.answer(2) == {"items": [7, 8], "scores": [0.5, 0.25], "triggers": [[1, 2], [2]],
                                          "trigger_weights": [[0.75, 0.25], [1.0]],
                                          "num_candidates": 40, "num_personalized": 2}
    assert fingerprint(np.array([1, 2]), np.array([3, 4])) != fingerprint(np.array([1, 2]), np.array([3, 5]))
    forged = bytearray(raw)
    forged[-60] ^= 1  # one bit of the payload
    for bad in (b"", b"garbage", raw[:-1], bytes(forged), raw[:4] + b"\0" * 32 + raw[36:]):
        with pytest.raises(CacheCorrupt):
            CachedRec.from_bytes(bad, key)
    with pytest.raises(CacheCorrupt, match="authentication"):
        CachedRec.from_bytes(raw, b"another version's key")


def test_feast_history_store_drives_recommendations(built, tmp_path: Path) -> None:
    """``--feature-repo``: histories come from Feast's online store and clicks are pushed to it."""
    from pi2i.config import ServingConfig
    from pi2i.data.features import FeastHistoryStore, ingest
    from pi2i.online.runtime import OnlineRecommender, make_history_store

    repo_template = Path(__file__).resolve().parents[1] / "feature_repo"
    out = ingest(built["data"], str(repo_template), work_dir=str(tmp_path / "feast"))
    repo = out["repo"]
    cfg = ServingConfig(poll_s=0, cache_k=20)
    store = make_history_store(cfg, repo)
    assert isinstance(store, FeastHistoryStore)
    registry = str(tmp_path / "registry")
    reg.publish(registry, built["i2i"], built["model"])
    rec = OnlineRecommender(registry, cfg, history=store)
    try:
        assert rec.reload()["status"] == "swapped"
        user = built["warm_user"]
        assert len(store.get(user)[0]) > 0
        a = rec.recommend(user, 5)
        assert a["source"] == "computed" and rec.recommend(user, 5)["source"] == "cache"
        new_user = 8_000_000
        assert rec.recommend(new_user, 5)["source"] == "fallback"
        rec.record_event(new_user, int(built["warm_items"][0]), time.time_ns() // 1000)
        assert store.get(new_user)[0].tolist() == [int(built["warm_items"][0])]
        deadline = time.monotonic() + 10
        while rec.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.recommend(new_user, 5)["source"] in ("cache", "computed")
    finally:
        rec.close()


def test_serves_any_method_with_explanations(built, tmp_path: Path) -> None:
    """A version whose model dir records another method (method.json) is served through the Retriever
    interface: the same list as the method itself, with per-item explanations (triggers, contributions)."""
    from pi2i.config import ServingConfig, load_config
    from pi2i.ibs.i2i import I2IIndex
    from pi2i.methods import get_method
    from pi2i.methods.base import PAD, Histories, TrainInputs
    from pi2i.online.runtime import OnlineRecommender

    swing = get_method("swing").fit(TrainInputs(i2i=I2IIndex.load(built["i2i"])), load_config(None))
    model_dir = tmp_path / "swing-model"
    swing.save(str(model_dir))
    registry = str(tmp_path / "registry")
    reg.publish(registry, built["i2i"], str(model_dir))
    rec = OnlineRecommender(registry, ServingConfig(poll_s=0, cache_k=20))
    try:
        assert rec.reload()["status"] == "swapped" and rec.live is not None and rec.live.method == "swing"
        user, now = 9_000_000, time.time_ns() // 1000  # this model dir has no seed histories: clicks make one
        for i, item in enumerate(built["warm_items"][:5]):
            rec.record_event(user, int(item), now - 1000 + i)
        out = rec.recommend(user, 10)
        items, ts = rec.live.history.get(user)
        ref = swing.recommend(Histories.from_lists([(items, ts)]), 20, exclude_seen=True, explain=True)
        expect = [i for i in ref.items[0].tolist() if i != PAD][:10]
        n = out["num_personalized"]
        assert out["method"] == "swing" and out["source"] in ("computed", "cache") and n > 0
        assert out["items"][:n] == expect[:n] and not set(out["items"]) & set(items.tolist())
        for trig, w in zip(out["triggers"][:n], out["trigger_weights"][:n]):
            assert trig and set(trig) <= set(items.tolist()) and w == sorted(w, reverse=True) and w[0] > 0
        assert rec.recommend(user, 10) == {**out, "source": "cache"}
    finally:
        rec.close()


def test_startup_on_corrupt_current_is_not_ready(built, tmp_path: Path) -> None:
    """A live version that fails verification at startup is refused: not ready, 503s, the reason reported."""
    from pi2i.config import ServingConfig
    from pi2i.online.runtime import OnlineRecommender, Unavailable

    registry = str(tmp_path / "registry")
    v = reg.publish(registry, built["i2i"], built["model"])
    Path(reg.version_path(registry, v), "i2i_table.parquet").write_bytes(b"PAR1 not really")
    rec = OnlineRecommender(registry, ServingConfig(poll_s=0))
    try:
        res = rec.reload()
        assert res["status"] == "failed" and "checksum mismatch i2i_table.parquet" in res["error"]
        assert not rec.ready and rec.info(detail=True)["last_error"]["version"] == v
        with pytest.raises(Unavailable, match="no live version"):
            rec.recommend(1, 5)
    finally:
        rec.close()


def test_serve_cli_rejects_missing_registry(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pi2i.cli import app

    res = CliRunner().invoke(app, ["serve", "--registry", str(tmp_path / "nope"), "--port", "1"])
    assert res.exit_code != 0 and "registry not found" in str(res.exception)
