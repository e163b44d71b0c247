"""FSDP2 versus the DDP path: training step time and peak memory of the LM on one device.

    python benchmarks/fsdp_ddp.py --device cuda              # the 0.5B preset, bf16 autocast
    python benchmarks/fsdp_ddp.py --device cpu --size tiny   # plumbing check on CPU

Each variant runs in a fresh process (peak memory is per process): the real :class:`Trainer` with the
training config's ``parallel`` / ``activation_checkpointing`` switches, AdamW, synthetic unistream batches
of ``--frames`` tokens (text + speech) split over ``--batch`` rows, and a 1.5 s speaker reference per row.
On one device the DDP path has no wrapper (world size 1), so its figures are plain single-device
training; FSDP2 runs on a single-rank group and still gathers / frees each block, which is what it costs
before it saves memory on more ranks.
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

VARIANTS = {  # "+ckpt": activation checkpointing per transformer block
    "ddp": {"parallel": "ddp", "activation_checkpointing": False},
    "ddp+ckpt": {"parallel": "ddp", "activation_checkpointing": True},
    "fsdp2": {"parallel": "fsdp", "activation_checkpointing": False},
    "fsdp2+ckpt": {"parallel": "fsdp", "activation_checkpointing": True},
}


def _batch(cfg, rows: int, frames: int, device: torch.device):  # type: ignore[no-untyped-def]
    from mmspeech_core import Waveform
    from mmspeech_llm.data import LLMBatch
    from mmspeech_llm.layout import pad, unistream

    m = cfg.model
    g = torch.Generator().manual_seed(0)
    per_row = frames // rows
    text_n = per_row // 4  # ~3 speech tokens per text token, as in speech
    seqs = [
        unistream(
            torch.randint(0, m.text_vocab, (text_n,), generator=g),
            torch.randint(0, m.speech_vocab, (per_row - text_n - 4,), generator=g),
            m.eos,
        )
        for _ in range(rows)
    ]
    ref = Waveform.from_list(
        [torch.randn(int(1.5 * m.spk_sample_rate), generator=g) for _ in range(rows)], m.spk_sample_rate
    )
    return LLMBatch(pad(seqs), ref).to(device)


def child(args: argparse.Namespace) -> None:
    from mmspeech_core.training import DistInfo, TrainConfig, Trainer
    from mmspeech_llm.config import small_config, tiny_config
    from mmspeech_llm.model import SpeechLM

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = small_config() if args.size == "0.5B" else tiny_config()
    amp = "bf16" if device.type == "cuda" else "none"
    tc = TrainConfig(amp=amp, warmup_steps=1, max_steps=10**6, **VARIANTS[args.variant])  # type: ignore[arg-type]
    model = SpeechLM(cfg)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, tc, out, DistInfo(device=device))
        batch = _batch(cfg, args.batch, args.frames, device)
        for _ in range(args.warmup):
            trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(args.steps):
            metrics = trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s = (time.perf_counter() - t) / args.steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    print(json.dumps({"step_ms": 1000 * step_s, "peak_gib": peak, "loss": metrics["loss"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=["tiny", "0.5B"], default="0.5B")
    p.add_argument("--frames", type=int, default=8192, help="tokens per batch (all rows together)")
    p.add_argument("--batch", type=int, default=8, help="rows per batch")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    a = p.parse_args()
    if a.variant:
        return child(a)
    rows = []
    for v in a.variants:
        cmd = [sys.executable, __file__, "--variant", v, "--device", a.device, "--size", a.size]
        cmd += ["--frames", str(a.frames), "--batch", str(a.batch), "--steps", str(a.steps)]
        cmd += ["--warmup", str(a.warmup)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            rows.append([v, "failed", res.stderr.strip().splitlines()[-1][:80] if res.stderr else "", ""])
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        tokens_s = a.frames / (r["step_ms"] / 1000)
        rows.append([v, round(r["step_ms"], 1), round(tokens_s), round(r["peak_gib"], 2)])
        print(rows[-1], flush=True)  # a run cut short still shows the variants done
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    table(
        f"LM {a.size} training on one {name}: {a.frames} tokens per step in {a.batch} rows",
        ["variant", "ms / step", "tokens / s", "peak GiB"],
        rows,
    )


if __name__ == "__main__":
    main()
