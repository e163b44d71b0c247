"""Training memory and speed as the corpus grows: lazy feature shards versus in-memory dicts.

    uv run --no-sync python benchmarks/feature_store.py                       # 1k, 10k, 100k utterances
    uv run --no-sync python benchmarks/feature_store.py --sizes 1000 10000    # quicker

Writes synthetic corpora with the real extraction writer (:class:`ShardWriter`: tokens int16 at 25 Hz,
64-dim float16 latents at 50 Hz, 5-15 s per utterance), then in a fresh process per corpus builds the flow
dataset, its length-bucketed sampler and a DataLoader with workers, and reads ``--batches`` batches. Prints
peak RSS of the training process (and of its largest loader worker), and, on the smallest corpus, training
steps per second of the tiny flow with lazy shards against today's whole-corpus dicts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import table  # noqa: E402


def write_corpus(out: Path, n: int, seed: int = 0) -> None:
    from mmspeech_core.data import ShardWriter

    if (out / "done").is_file():
        return
    g = torch.Generator().manual_seed(seed)
    tw, lw = ShardWriter(out / "tokens", 1000), ShardWriter(out / "latents", 1000)
    lines = []
    for i in range(n):
        seconds = 5 + 10 * torch.rand((), generator=g).item()
        tokens = int(seconds * 25)
        tw.add(f"u{i}", torch.randint(0, 6561, (tokens,), generator=g))
        lw.add(f"u{i}", torch.randn(64, tokens * 2, generator=g))
        lines.append(json.dumps({"id": f"u{i}", "audio": "x.wav", "speaker": f"s{i % 500}"}))
    tw.flush()
    lw.flush()
    (out / "m.jsonl").write_text("\n".join(lines) + "\n")
    (out / "done").write_text("")


def _dataset(corpus: Path, eager: bool, max_open: int):  # type: ignore[no-untyped-def]
    from mmspeech_core.data import FeatureStore, read_manifest
    from mmspeech_flow.data import FlowDataset

    utts = read_manifest(corpus / "m.jsonl")
    tokens, latents = FeatureStore(corpus / "tokens", max_open), FeatureStore(corpus / "latents", max_open)
    if eager:  # what training did before: every tensor in memory, latents as float32
        return FlowDataset(
            {k: v.long() for k, v in tokens.items()},
            {k: v.float() for k, v in latents.items()},
            2,
            {u.id: u.speaker for u in utts},
        )
    return FlowDataset(tokens, latents, 2, {u.id: u.speaker for u in utts})


def child(
    corpus: Path, batches: int, workers: int, eager: bool, train: bool, max_open: int, mode: str
) -> None:
    """One measurement in a fresh process: prints a JSON line."""
    import dataclasses
    import functools

    from mmspeech_core.training import DistInfo, fast_train_config, move_to, train_loader
    from mmspeech_flow.config import tiny_config
    from mmspeech_flow.data import collate
    from mmspeech_flow.model import FlowModel

    torch.set_num_threads(1)
    ds = _dataset(corpus, eager, max_open)
    cfg = tiny_config(latent_dim=64, spk_in_dim=64)
    cfg = dataclasses.replace(
        cfg, train=fast_train_config(batches, 1e-3, max_frames=4000, num_workers=workers, data=mode)
    )
    to_batch = functools.partial(collate, token_rate=25.0, latent_rate=50.0)
    loader, set_epoch = train_loader(ds, to_batch, cfg.train, DistInfo())
    set_epoch(0)
    model = FlowModel(cfg) if train else None
    opt = torch.optim.AdamW(model.parameters(), 1e-3) if model is not None else None
    seen, t0, worker_peak = 0, time.perf_counter(), 0.0
    it = iter(loader)
    for batch in it:
        if model is not None and opt is not None:
            loss = model.training_loss(move_to(batch, torch.device("cpu")))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        seen += 1
        for w in getattr(it, "_workers", []):  # sampled while they live (an epoch's end stops them)
            worker_peak = max(worker_peak, peak_rss_mb(w.pid))
        if seen == batches:
            break
    wall = time.perf_counter() - t0
    # VmHWM (peak RSS of this process image; getrusage's maxrss would include the forking parent's)
    me, kids = peak_rss_mb("self"), worker_peak
    print(
        json.dumps(
            {"rss_mb": me, "worker_rss_mb": kids, "batches": seen, "per_s": seen / wall, "items": len(ds)}
        )
    )


def peak_rss_mb(pid: int | str) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(
    corpus: Path,
    batches: int,
    workers: int,
    max_open: int,
    eager: bool = False,
    train: bool = False,
    mode: str = "map",
) -> dict:
    cmd = [sys.executable, __file__, "--child", str(corpus), "--batches", str(batches)]
    cmd += ["--workers", str(workers), "--max-open", str(max_open), "--mode", mode]
    cmd += ["--eager"] * eager + ["--train"] * train
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-open", type=int, default=32, help="FeatureStore: shards kept open per process")
    p.add_argument("--root", default=None, help="where corpora are written (default: a temp folder; reused)")
    p.add_argument("--modes", nargs="+", default=["map", "stream"], choices=["map", "stream"])
    p.add_argument("--mode", default="map", help=argparse.SUPPRESS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(Path(a.child), a.batches, a.workers, a.eager, a.train, a.max_open, a.mode)
    root = Path(a.root or Path(tempfile.gettempdir()) / "mmspeech-feature-bench")
    rows = []
    for n in a.sizes:
        t = time.perf_counter()
        write_corpus(root / str(n), n)
        written = time.perf_counter() - t
        gb = sum(f.stat().st_size for f in (root / str(n)).rglob("*.safetensors")) / 1e9
        row: list = [n, f"{gb:.2f}", f"{written:.0f}"]
        for mode in a.modes:
            r = measure(root / str(n), a.batches, a.workers, a.max_open, mode=mode)
            row += [r["rss_mb"], r["worker_rss_mb"], r["per_s"]]
        rows.append(row)
    heads = [f"{m} {h}" for m in a.modes for h in ("peak RSS MB", "worker peak MB", "batches/s")]
    table(
        f"lazy shards, {a.batches} batches, {a.workers} workers, {a.max_open} open shards",
        ["utterances", "shards GB", "write s", *heads],
        rows,
    )
    for k, mode in enumerate(a.modes):
        first, last = rows[0][3 + 3 * k], rows[-1][3 + 3 * k]
        print(
            f"{mode}: RSS growth {a.sizes[0]} -> {a.sizes[-1]} utterances: {last - first:+.0f} MB "
            f"({last / first - 1:+.1%})"
        )
    small = root / str(a.sizes[0])
    speed = []
    for name, eager, mode in [("in-memory dicts (before)", True, "map")] + [
        (f"lazy shards, {m}", False, m) for m in a.modes
    ]:
        r = measure(small, 100, a.workers, a.max_open, eager=eager, train=True, mode=mode)
        speed.append([name, r["rss_mb"], r["per_s"]])
    table(
        f"tiny flow training on {a.sizes[0]} utterances, 100 steps",
        ["features", "peak RSS MB", "steps/s"],
        speed,
    )


if __name__ == "__main__":
    main()
