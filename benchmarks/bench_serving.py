"""Serving benchmark over loopback: cached /recommend latency and throughput, the miss path at ~1k and ~10k
candidates, and click-to-fresh-recommendation time. Bounded in time (about 1-2 minutes).

    .venv/bin/python benchmarks/bench_serving.py [--registry R] [--duration 8] [--rate 500] [--out F.json]

Without ``--registry`` it builds the tiny synthetic model (1 short epoch) and publishes two versions into a
temp registry: the model's own i2i table, and the same model with a synthetic wide i2i table (rows of 1,000
distinct targets) so that 1 trigger retrieves ~1k candidates and 10 triggers ~10k. The server is started
with ``pi2i serve`` on 127.0.0.1 and stopped at the end. The HTTP client is a minimal asyncio keep-alive
client so that the client costs less CPU than the server it measures (both share the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PI2I = str(Path(sys.executable).parent / "pi2i")
TOKEN = "bench-admin-token"  # the server's PI2I_ADMIN_TOKEN (admin and write endpoints need it)


# --------------------------------------------------------------------------------------------- client

class Conn:
    """One HTTP/1.1 keep-alive connection; POST JSON, return (status, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def open(self) -> Conn:
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        data = json.dumps(body).encode()
        assert self.w is not None and self.r is not None
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        head = await self.r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        payload = await self.r.readexactly(n)
        return status, json.loads(payload) if payload else {}

    async def get(self, path: str) -> dict:
        assert self.w is not None and self.r is not None
        self.w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        head = await self.r.readuntil(b"\r\n\r\n")
        n = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:"))
        return json.loads(await self.r.readexactly(n))

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


def summary(lat: list[float], wall: float, errors: int, sources: dict) -> dict:
    return {"requests": len(lat), "errors": errors, "req_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(pct(lat, 50), 3), "p90_ms": round(pct(lat, 90), 3), "p99_ms": round(pct(lat, 99), 3),
            "max_ms": round(pct(lat, 100), 3), "sources": sources}


# --------------------------------------------------------------------------------------------- phases

async def closed_loop(port: int, users: list[int], conc: int, duration: float) -> dict:
    """``conc`` connections, each sending the next request as soon as the last answer arrives."""
    conns = [await Conn(port).open() for _ in range(conc)]
    lat: list[float] = []
    sources: dict[str, int] = {}
    errors = 0
    end = time.perf_counter() + duration

    async def worker(i: int, c: Conn) -> None:
        nonlocal errors
        j = i
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            st, body = await c.post("/recommend", {"user_id": users[j % len(users)], "k": 20})
            lat.append(time.perf_counter() - t0)
            if st != 200:
                errors += 1
            else:
                sources[body["source"]] = sources.get(body["source"], 0) + 1
            j += conc

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return summary(lat, wall, errors, sources)


async def open_loop(port: int, users: list[int], rate: float, duration: float, conns_n: int = 16) -> dict:
    """Requests scheduled at a fixed rate; latency counted from the scheduled time (no coordinated omission)."""
    conns = [await Conn(port).open() for _ in range(conns_n)]
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    lat: list[float] = []
    sources: dict[str, int] = {}
    errors = 0

    async def one(i: int, sched: float) -> None:
        nonlocal errors
        c = await free.get()
        try:
            st, body = await c.post("/recommend", {"user_id": users[i % len(users)], "k": 20})
        finally:
            free.put_nowait(c)
        lat.append(time.perf_counter() - sched)
        if st != 200:
            errors += 1
        else:
            sources[body["source"]] = sources.get(body["source"], 0) + 1

    n = int(rate * duration)
    t0 = time.perf_counter()
    tasks = []
    for i in range(n):
        sched = t0 + i / rate
        delay = sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, sched)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    out = summary(lat, wall, errors, sources)
    out["target_rate"] = rate
    return out


async def miss_path(port: int, triggers: list[int], n_users: int, user0: int) -> dict:
    """Users whose history is ``triggers``: the exclude_seen=false answer is never precomputed, so each first
    call runs PRS inference over the union of the triggers' rows."""
    c = await Conn(port).open()
    lat, cands, sources = [], [], {}
    for u in range(user0, user0 + n_users):
        for t in triggers:
            st, body = await c.post("/events", {"user_id": u, "item_id": int(t)})
            assert st == 202, body
        await _drain(c)
        t0 = time.perf_counter()
        st, body = await c.post("/recommend", {"user_id": u, "k": 100, "exclude_seen": False})
        lat.append(time.perf_counter() - t0)
        assert st == 200, body
        sources[body["source"]] = sources.get(body["source"], 0) + 1
        cands.append(body["num_candidates"])
    c.close()
    return {"users": n_users, "triggers": len(triggers), "candidates_median": int(np.median(cands)),
            "p50_ms": round(pct(lat, 50), 2), "p90_ms": round(pct(lat, 90), 2), "max_ms": round(pct(lat, 100), 2),
            "sources": sources}


async def _drain(c: Conn, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while (await c.get("/version"))["nearline_pending"] and time.monotonic() < end:
        await asyncio.sleep(0.005)


async def click_to_fresh(port: int, item: int, n: int, user0: int) -> dict:
    """Per click: (a) time until the nearline result is in the cache (polled every 2 ms), and (b) latency of a
    /recommend sent right after the click (always fresh: computed if the nearline result has not landed)."""
    c = await Conn(port).open()
    landed, immediate, imm_src = [], [], {}
    for u in range(user0, user0 + n):
        t0 = time.perf_counter()
        st, _ = await c.post("/events", {"user_id": u, "item_id": item})
        assert st == 202
        while True:
            st, body = await c.post("/recommend", {"user_id": u, "k": 20})
            if body.get("source") == "cache" or time.perf_counter() - t0 > 10:
                break
            await asyncio.sleep(0.002)
        landed.append(time.perf_counter() - t0)
    for u in range(user0 + n, user0 + 2 * n):
        await _drain(c)
        t0 = time.perf_counter()
        await c.post("/events", {"user_id": u, "item_id": item})
        st, body = await c.post("/recommend", {"user_id": u, "k": 20})
        immediate.append(time.perf_counter() - t0)
        assert body["history_len"] == 1
        imm_src[body["source"]] = imm_src.get(body["source"], 0) + 1
    c.close()
    return {"clicks": n, "event_to_cached_p50_ms": round(pct(landed, 50), 2),
            "event_to_cached_p90_ms": round(pct(landed, 90), 2),
            "event_plus_next_recommend_p50_ms": round(pct(immediate, 50), 2),
            "event_plus_next_recommend_p90_ms": round(pct(immediate, 90), 2), "next_recommend_sources": imm_src}


# --------------------------------------------------------------------------------------------- setup

def build_registry(root: Path) -> tuple[str, dict]:
    """Tiny model + (a) its own i2i table, (b) a wide synthetic i2i table for the miss path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pi2i.config import load_config
    from pi2i.contracts import I2I_SCHEMA, read_events, write_parquet
    from pi2i.data.synthetic import generate_preset
    from pi2i.ibs.swing import build_swing
    from pi2i.prs.sampling import build_samples
    from pi2i.prs.train import train
    from pi2i.publish import registry as reg

    data = root / "data"
    generate_preset("tiny", str(data), seed=0)
    cfg = load_config(None, {"swing": {"top_t": 200}, "train": {
        "epochs": 1, "num_workers": 0, "patience": 0, "batch_size": 128, "max_batches_per_epoch": 4,
        "storage_path": str(root / "ray")}})
    i2i, _ = build_swing(read_events(str(data / "events.parquet")), cfg.swing)
    write_parquet(i2i, str(root / "i2i.parquet"))
    build_samples(str(data / "events.parquet"), str(root / "i2i.parquet"), str(root / "samples"), cfg,
                  items_uri=str(data / "items.parquet"))
    train(str(root / "samples"), str(root / "model"), cfg, progress=False)
    registry = str(root / "registry")
    v_small = reg.publish(registry, str(root / "i2i.parquet"), str(root / "model"))
    # wide table: trigger j (the model's item ids) -> 1,000 distinct targets; 10 consecutive triggers -> 10k
    items = np.unique(pq.read_table(data / "items.parquet").column("item_id").to_numpy())
    T, n_targets = 1000, 20_000
    trig = np.repeat(items, T)
    tgt = (np.arange(len(items))[:, None] * T + np.arange(T)[None, :]) % n_targets + 1
    wide = pa.table({"trigger": trig, "target": tgt.ravel().astype(np.int64),
                     "score": np.tile(np.linspace(1.0, 0.01, T, dtype=np.float32), len(items)),
                     "rank": np.tile(np.arange(1, T + 1, dtype=np.int32), len(items))}, schema=I2I_SCHEMA)
    write_parquet(wide, str(root / "i2i_wide.parquet"))
    v_wide = reg.publish(registry, str(root / "i2i_wide.parquet"), str(root / "model"))
    hist = pq.read_table(root / "model" / "histories.parquet")
    return registry, {"small": v_small, "wide": v_wide, "items": items.tolist(),
                      "users": hist.column("user_id").to_numpy().tolist()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(registry: str, root: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = root / "bench.yaml"
    cfg.write_text("serving:\n  poll_s: 0\n  max_k: 500\n  cache_k: 100\n")
    log = open(root / "server.log", "wb")  # noqa: SIM115 - held for the server's lifetime
    proc = subprocess.Popen([PI2I, "serve", "--registry", registry, "--port", str(port), "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PI2I_ADMIN_TOKEN": TOKEN})
    import httpx

    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError((root / "server.log").read_text()[-3000:])


def server_cpu_s(proc: subprocess.Popen) -> float:
    """User+system CPU seconds of the server's process tree: CPU per request is the load-independent number
    (latency percentiles on a shared machine measure the neighbours as much as the server)."""
    import psutil

    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _with_cpu(proc: subprocess.Popen, run) -> dict:
    c0 = server_cpu_s(proc)
    out = run()
    out["server_cpu_ms_per_req"] = round((server_cpu_s(proc) - c0) * 1000 / max(out["requests"], 1), 3)
    return out


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per load phase")
    ap.add_argument("--rate", type=float, default=500.0, help="open-loop request rate")
    ap.add_argument("--concurrency", type=int, default=8, help="closed-loop connections")
    ap.add_argument("--miss-users", type=int, default=15, help="samples per miss-path size")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (registry, server.log)")
    args = ap.parse_args()

    import httpx

    from pi2i.publish import registry as reg

    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="pi2i-bench-serving-"))
    registry, info = build_registry(root)
    reg.promote(registry, info["small"])
    proc, port = start_server(registry, root)
    res: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
                 "note": "loopback; client and server share the machine's cores"}
    try:
        users = info["users"]

        async def warm() -> None:
            c = await Conn(port).open()
            for u in users:
                await c.post("/recommend", {"user_id": u, "k": 20})
            c.close()

        asyncio.run(warm())
        res["cached_sequential"] = _with_cpu(proc, lambda: asyncio.run(closed_loop(port, users, 1, args.duration / 2)))
        res["cached_closed_loop"] = _with_cpu(
            proc, lambda: asyncio.run(closed_loop(port, users, args.concurrency, args.duration)))
        res["cached_open_loop"] = _with_cpu(proc, lambda: asyncio.run(open_loop(port, users, args.rate, args.duration)))
        res["click_to_fresh"] = asyncio.run(click_to_fresh(port, int(info["items"][0]), 20, 50_000_000))
        # miss path on the wide table (hot-swapped in)
        reg.promote(registry, info["wide"])
        r = httpx.post(f"http://127.0.0.1:{port}/admin/reload", timeout=120,
                       headers={"authorization": f"Bearer {TOKEN}"}).json()
        assert r["status"] == "swapped", r
        items = info["items"]
        res["miss_1k"] = asyncio.run(miss_path(port, items[:1], args.miss_users, 60_000_000))
        res["miss_10k"] = asyncio.run(miss_path(port, items[:10], args.miss_users, 61_000_000))
        res["server_load_s"] = httpx.get(f"http://127.0.0.1:{port}/version",
                                         headers={"authorization": f"Bearer {TOKEN}"}).json()["load_s"]
    finally:
        stop_server(proc)
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
