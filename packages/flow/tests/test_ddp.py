import dataclasses
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from mmspeech_core.config import save_config
from mmspeech_core.data import ShardWriter
from mmspeech_core.training import fast_train_config
from mmspeech_flow.config import tiny_config
from mmspeech_flow.model import FlowModel


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_process_training(tmp_path, parallel):
    """Two CPU ranks (gloo) train through the CLI, under DDP or FSDP2 (with bf16 ignored on CPU, gradient
    accumulation, activation checkpointing, and the shards streamed: unequal batch counts would hang a
    rank): rank 0 checkpoints plain weights, both exit 0."""
    g = torch.Generator().manual_seed(0)
    tw, lw = ShardWriter(tmp_path / "tokens", 2), ShardWriter(tmp_path / "latents", 2)
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
        train=fast_train_config(
            6,
            1e-3,
            warmup_steps=1,
            max_frames=40,
            parallel=parallel,
            grad_accum=2 if parallel == "fsdp" else 1,
            activation_checkpointing=parallel == "fsdp",
        ),
    )
    save_config(cfg, tmp_path / "flow.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531" if parallel == "ddp" else "29533",
    ]
    cmd += shlex.split(
        f"-m mmspeech_flow.cli train --config {tmp_path / 'flow.json'} --tokens {tmp_path / 'tokens'} "
        f"--latents {tmp_path / 'latents'} --manifest {tmp_path / 'm.jsonl'} --out {tmp_path / 'run'} --device cpu"
        + (" --data stream" if parallel == "fsdp" else "")
    )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-00000006"
    model = FlowModel.from_pretrained(tmp_path / "run" / "checkpoint-00000006")  # loads on one process
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert model.config.train.data == ("stream" if parallel == "fsdp" else "map")


def _scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_fine_tuning_starts_from_the_trained_loss_and_keeps_frozen_parts(tmp_path):
    """Issue 14: `train --init-from RUN --freeze speaker_encoder` starts where RUN ended, not from scratch."""
    from mmspeech_core.data import Utterance  # noqa: F401  (manifest format below)
    from mmspeech_flow.cli import main

    g = torch.Generator().manual_seed(0)
    table = torch.randn(64, 8, generator=g)  # latents a function of tokens: learnable
    tw, lw = ShardWriter(tmp_path / "tokens"), ShardWriter(tmp_path / "latents")
    lines = []
    for i in range(4):
        tok = torch.randint(0, 64, (6,), generator=g)
        tw.add(f"u{i}", tok)
        lw.add(f"u{i}", table[tok].T.repeat_interleave(2, dim=1))
        lines.append(json.dumps({"id": f"u{i}", "audio": "x.wav", "speaker": f"s{i % 2}"}))
    tw.flush()
    lw.flush()
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    cfg = tiny_config()
    cfg = dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, cfg_dropout=0.0, prompt_prob=0.0),
        train=fast_train_config(120, 3e-3, warmup_steps=5, max_frames=1000, log_every=1),
    )
    save_config(cfg, tmp_path / "flow.json")
    common = (
        f"train --config {tmp_path / 'flow.json'} --tokens {tmp_path / 'tokens'} --latents {tmp_path / 'latents'} "
        f"--manifest {tmp_path / 'm.jsonl'} --device cpu --val-fraction 0"
    )
    assert main(shlex.split(f"{common} --out {tmp_path / 'scratch'}")) == 0
    assert (
        main(
            shlex.split(
                f"{common} --out {tmp_path / 'tuned'} --max-steps 5 --init-from {tmp_path / 'scratch'} --freeze speaker_encoder"
            )
        )
        == 0
    )
    scratch, tuned = _scalars(tmp_path / "scratch", "train/fm"), _scalars(tmp_path / "tuned", "train/fm")
    assert len(tuned) == 5
    assert sum(tuned) / 5 < 0.5 * sum(scratch[:5]) / 5  # it starts trained
    before = FlowModel.from_pretrained(tmp_path / "scratch" / "checkpoint-00000120").state_dict()
    after = FlowModel.from_pretrained(tmp_path / "tuned" / "checkpoint-00000005").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("speaker_encoder."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("estimator."))
    assert (
        main(
            shlex.split(
                f"{common} --out {tmp_path / 'x'} --init-from {tmp_path / 'scratch'} --freeze estimatr"
            )
        )
        == 2
    )
    assert main(shlex.split(f"{common} --out {tmp_path / 'y'} --freeze estimator")) == 2
