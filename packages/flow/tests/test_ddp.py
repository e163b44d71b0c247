import dataclasses
import json
import os
import shlex
import subprocess
import sys

import torch
from mmspeech_core.config import save_config
from mmspeech_core.data import ShardWriter
from mmspeech_core.training import fast_train_config
from mmspeech_flow.config import tiny_config
from mmspeech_flow.model import FlowModel


def test_torchrun_two_process_ddp_training(tmp_path):
    """Two CPU ranks (gloo) train through the CLI: gradients are all-reduced, rank 0 checkpoints, both exit 0."""
    g = torch.Generator().manual_seed(0)
    tw, lw = ShardWriter(tmp_path / "tokens"), ShardWriter(tmp_path / "latents")
    lines = []
    for i in range(8):
        n = 6 + i % 3
        tw.add(f"u{i}", torch.randint(0, 64, (n,), generator=g))
        lw.add(f"u{i}", torch.randn(8, 2 * n, generator=g))
        lines.append(json.dumps({"id": f"u{i}", "audio": "x.wav", "speaker": f"s{i % 2}"}))
    tw.flush()
    lw.flush()
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    cfg = dataclasses.replace(
        tiny_config(),
        train=fast_train_config(6, 1e-3, warmup_steps=1, max_frames=40),
    )
    save_config(cfg, tmp_path / "flow.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    cmd += shlex.split(
        f"-m mmspeech_flow.cli train --config {tmp_path / 'flow.json'} --tokens {tmp_path / 'tokens'} "
        f"--latents {tmp_path / 'latents'} --manifest {tmp_path / 'm.jsonl'} --out {tmp_path / 'run'} --device cpu"
    )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-00000006"
    FlowModel.from_pretrained(tmp_path / "run" / "checkpoint-00000006")
