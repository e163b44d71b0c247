"""Load on the HTTP server, 127.0.0.1 only: success rate, latency, throughput and server memory.

    uv run --no-sync mmspeech quickstart --out quickstart          # a bundle and a voice, if you have none
    uv run --no-sync python benchmarks/serve_load.py --bundle quickstart/bundle --voice quickstart/voice_*.safetensors

Starts ``mmspeech serve`` in its own process (so its RSS is the server's alone), sends ``--requests``
requests of short varied sentences at each concurrency, then probes head-of-line blocking: the latency of
"Hello!" sent while a 4,000-character request is being synthesised, against the same request alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import table  # noqa: E402

SENTENCES = [
    "Hello there, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you have a moment.",
    "It is going to rain this afternoon.",
    "We will meet at the station at nine.",
]


def post(url: str, body: dict, timeout: float = 600) -> tuple[bool, float]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            ok = r.status == 200 and len(r.read()) > 44
    except (urllib.error.URLError, OSError):
        ok = False
    return ok, time.perf_counter() - t


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_up(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not come up")


def load(url: str, n: int, concurrency: int, seed0: int) -> list[object]:
    bodies = [
        {
            "input": SENTENCES[i % len(SENTENCES)],
            "voice": "bench",
            "seed": seed0 + i,
            "response_format": "pcm",
        }
        for i in range(n)
    ]
    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda b: post(url, b), bodies))
    wall = time.perf_counter() - t
    lat = sorted(dt for ok, dt in results if ok)
    ok = len(lat)
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return [concurrency, n, f"{ok / n:.0%}", p(0.5), p(0.95), ok / wall]


def head_of_line(url: str) -> list[list[object]]:
    long_text = " ".join(SENTENCES * 40)[:4000]
    alone = post(url, {"input": "Hello!", "voice": "bench", "response_format": "pcm"})[1]
    out: dict[str, float] = {}
    th = threading.Thread(
        target=lambda: out.update(long=post(url, {"input": long_text, "voice": "bench"})[1])
    )
    th.start()
    time.sleep(1.0)  # the long request is being synthesised
    behind = post(url, {"input": "Hello!", "voice": "bench", "response_format": "pcm"})[1]
    th.join()
    return [
        ["'Hello!' alone", alone * 1000],
        ["'Hello!' behind 4,000 characters", behind * 1000],
        ["the 4,000-character request", out["long"] * 1000],
    ]


def first_bytes(url: str, body: dict) -> tuple[float, float]:
    """(seconds to the first audio bytes, seconds to the last) of one request, read as it arrives."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read(1 if body.get("response_format") == "pcm" else 45)  # past a wav header: audio
        first = time.perf_counter() - t
        r.read()
    return first, time.perf_counter() - t


def streaming(url: str) -> list[list[object]]:
    text = " ".join(SENTENCES)
    rows = []
    for mode, extra in (("whole response", {}), ("stream: true", {"stream": True})):
        first, total = first_bytes(url, {"input": text, "voice": "bench", "response_format": "pcm", **extra})
        rows.append([mode, first * 1000, total * 1000])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle folder")
    p.add_argument("--voice", required=True, help="a voice preset (.safetensors) to serve as 'bench'")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--device", default="cpu")
    p.add_argument("--port", type=int, default=8765)
    a = p.parse_args()
    voices = Path(tempfile.mkdtemp())
    shutil.copy(a.voice, voices / "bench.safetensors")
    base = f"http://127.0.0.1:{a.port}"
    cmd = [
        sys.executable,
        "-m",
        "mmspeech_pipeline.cli",
        "serve",
        "--bundle",
        a.bundle,
        "--voices",
        str(voices),
        "--port",
        str(a.port),
        "--device",
        a.device,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    try:
        wait_up(base, proc)
        url = base + "/v1/audio/speech"
        post(url, {"input": SENTENCES[0], "voice": "bench"})  # warm-up
        rss0 = rss_mb(proc.pid)
        rows = []
        for c in a.concurrency:
            rows.append(load(url, a.requests, c, 1000 * c) + [rss_mb(proc.pid)])
        hol = head_of_line(url)
        stream_rows = streaming(url)
        rss1 = rss_mb(proc.pid)
        table(
            f"serve: {a.requests} requests per level, 127.0.0.1, {a.device} (server RSS after warm-up {rss0:.0f} MB)",
            ["concurrency", "requests", "success", "p50 ms", "p95 ms", "requests/s", "server RSS MB"],
            rows,
        )
        table("head-of-line", ["request", "latency ms"], hol)
        table(
            f"first audio bytes, {len(SENTENCES)} sentences",
            ["response", "first bytes ms", "last ms"],
            stream_rows,
        )
        print(f"\nserver RSS: {rss0:.0f} MB after warm-up, {rss1:.0f} MB at the end ({rss1 - rss0:+.0f} MB)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(voices)


if __name__ == "__main__":
    main()
