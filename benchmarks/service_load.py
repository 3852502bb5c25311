"""The service under load: 32 concurrent clients verifying probes against enrolled subjects over HTTP.

Setup: a SQLite gallery of the bundled London faces (102 people, the first photo of each enrolled),
a policy whose verification limit is lifted (it exists to stop one actor looping over subject ids,
not a load test), one API key per client. The server is `faceaudit serve --workers 2` on 127.0.0.1.

Load: a separate process (this one) runs 32 asyncio clients with httpx for DURATION seconds (default
180), each POSTing /v1/verify with a probe (the person's second photo) and the subject id, one request
after another. Reported: requests, errors (any non-200), p50/p99 latency, throughput, and the server's
RSS (parent and workers added up, sampled every second): the peak of the first minute against the
peak of the last.

In-process reference, in the same run, just after: the same verifications through the Python API
(`Gallery.verify`, probe bytes in, no HTTP), in 2 processes (the server's 2 workers) for 60 s. The
figure is the server's throughput over this one (target >= 0.8).
Usage: python benchmarks/service_load.py [DURATION_SECONDS]
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil

from _common import write_result
from faceaudit.demo import bundled_manifest
from faceaudit.gallery.crypto import generate_key_file
from faceaudit.gallery.gallery import Consent, Gallery
from faceaudit.gallery.policy import Policy

CLIENTS = 32
IN_PROCESS_S = 60.0
POLICY = {"roles": {"*": ["enrol", "verify", "detect", "embed"]}, "limits": {"max_verifies": 10_000_000}}


def _pairs() -> list[tuple[str, str, str]]:
    """(subject id, enrolled photo, probe photo) of every bundled person."""
    m = bundled_manifest()
    t = pd.read_csv(m, dtype=str)
    out = []
    for sid, rows in t.groupby("subject_id"):
        paths = [str(m.parent / p) for p in rows["path"]]
        if len(paths) >= 2:
            out.append((str(sid), paths[0], paths[1]))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        return int(p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True)))
    except psutil.NoSuchProcess:
        return 0


async def _client(http: httpx.AsyncClient, key: str, work: list[tuple[str, bytes]], until: float,
                  lat: list[float], codes: dict[int, int]) -> None:
    i = 0
    while time.monotonic() < until:
        sid, probe = work[i % len(work)]
        i += 1
        t0 = time.perf_counter()
        try:
            r = await http.post("/v1/verify", headers={"Authorization": f"Bearer {key}"},
                                files={"image": ("probe.jpg", probe, "image/jpeg")}, data={"subject_id": sid})
            code = r.status_code
        except httpx.HTTPError:
            code = -1
        lat.append(time.perf_counter() - t0)
        codes[code] = codes.get(code, 0) + 1


async def _load(url: str, keys: list[str], work: list[tuple[str, bytes]], seconds: float, pid: int
                ) -> dict[str, Any]:
    lat: list[float] = []
    codes: dict[int, int] = {}
    rss: list[tuple[float, int]] = []
    start = time.monotonic()
    until = start + seconds

    async def sample() -> None:
        while time.monotonic() < until:
            rss.append((time.monotonic() - start, _rss(pid)))
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as http:
        await asyncio.gather(sample(), *[_client(http, keys[c], work[c::CLIENTS] or work, until, lat, codes)
                                         for c in range(CLIENTS)])
    elapsed = time.monotonic() - start
    lat.sort()
    first = max((r for t, r in rss if t < 60), default=0)
    last = max((r for t, r in rss if t >= seconds - 60), default=0)
    n = len(lat)
    return {"requests": n, "status_codes": {str(k): v for k, v in sorted(codes.items())},
            "errors": n - codes.get(200, 0), "error_rate": (n - codes.get(200, 0)) / max(n, 1),
            "p50_ms": 1000 * lat[n // 2] if n else None, "p99_ms": 1000 * lat[min(n - 1, int(n * 0.99))] if n else None,
            "throughput_per_s": n / elapsed, "seconds": elapsed,
            "rss_first_minute_peak_mib": first / 2**20, "rss_last_minute_peak_mib": last / 2**20,
            "rss_last_over_first": last / first if first else None}


def _in_process_worker(folder: str, key_file: str, work: list[tuple[str, bytes]], seconds: float,
                       out: Any) -> None:
    g = Gallery.open(folder, key_file=key_file, actor="in-process", role="operator")
    g.verify(work[0][0], image=work[0][1])  # load the engine before the clock starts
    n, i = 0, 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sid, probe = work[i % len(work)]
        g.verify(sid, image=probe)
        n += 1
        i += 1
    g.close()
    out.put(n)


def _in_process(folder: str, key_file: str, work: list[tuple[str, bytes]]) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_in_process_worker, args=(folder, key_file, work[k::2], IN_PROCESS_S, q))
             for k in range(2)]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / IN_PROCESS_S


def main() -> None:
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 180.0
    work_dir = Path(tempfile.mkdtemp(prefix="faceaudit-load-"))
    folder, key_file = work_dir / "gallery", work_dir / "gallery.key"
    generate_key_file(key_file)
    pairs = _pairs()
    with Gallery.init(folder, key_file=key_file, policy=Policy.from_dict(POLICY)) as g:
        for sid, enrolled, _ in pairs:
            g.enrol(sid, Consent("load test", "2026-12-01", "consent"), images=[enrolled])
    faceaudit = str(Path(sys.executable).with_name("faceaudit"))
    keys = []
    for c in range(CLIENTS):
        done = subprocess.run([faceaudit, "keys", "create", "--gallery", str(folder), "--key", str(key_file),
                               "--name", f"client-{c:02d}", "--role", "operator"], check=True, capture_output=True,
                              text=True)
        keys.append(done.stdout.strip().splitlines()[-1])
    work = [(sid, Path(probe).read_bytes()) for sid, _, probe in pairs]
    port = _free_port()
    server = subprocess.Popen([faceaudit, "serve", "--gallery", str(folder), "--key", str(key_file), "--port",
                               str(port), "--workers", "2", "--rate-per-minute", "100000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the server did not become ready in 120 s")
        http = asyncio.run(_load(url, keys, work, duration, server.pid))
    finally:
        server.terminate()
        server.wait(60)
    reference = _in_process(str(folder), str(key_file), work)
    ratio = http["throughput_per_s"] / reference
    result = {"clients": CLIENTS, "server_workers": 2, "duration_s": duration, "http": http,
              "in_process_per_s": reference, "in_process_seconds": IN_PROCESS_S,
              "throughput_over_in_process": ratio,
              "targets": {"error_rate": 0, "throughput_over_in_process": ">= 0.8", "rss_last_over_first": "<= 1.1"}}
    print(f"{http['requests']:,} requests in {http['seconds']:.0f} s, errors {http['errors']} "
          f"({http['status_codes']}); p50 {http['p50_ms']:.0f} ms, p99 {http['p99_ms']:.0f} ms; "
          f"{http['throughput_per_s']:.1f}/s over HTTP against {reference:.1f}/s in-process: {ratio:.2f}x; "
          f"server RSS peak first minute {http['rss_first_minute_peak_mib']:.0f} MiB, last minute "
          f"{http['rss_last_minute_peak_mib']:.0f} MiB ({http['rss_last_over_first']:.3f}x)")
    write_result("service_load", result)
    shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
