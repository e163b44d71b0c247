"""The shared Trainer: resume continues data, RNG and checkpoints exactly; ranks agree on failures."""

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mmspeech_core.data import LengthBatchSampler, ShardStream
from mmspeech_core.training import TrainConfig, Trainer, set_seed
from mmspeech_core.training import fast_train_config as core_fast_train_config


def fast_train_config(steps: int, **overrides) -> TrainConfig:
    return core_fast_train_config(steps, 1e-2, log_every=1, **({"warmup_steps": 1} | overrides))


class Preempted(Exception):
    """Stands for the job being killed."""


class Recorder(torch.nn.Module):
    """Records every batch it trains on and the random numbers it draws (torch, numpy, python)."""

    def __init__(self, crash_at: int | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen: list[list[int]] = []
        self.draws: list[tuple[float, float, float]] = []
        self.crash_at = crash_at

    def training_loss(self, batch):
        if self.training and len(self.seen) == self.crash_at:
            raise Preempted
        if self.training:  # validation draws are the evaluator's business
            self.seen.append(batch.tolist())
            self.draws.append((float(torch.rand(())), float(np.random.rand()), random.random()))
        return {"loss": (self.w * batch.float()).mean() ** 2}

    def save_pretrained(self, d):
        from mmspeech_core.checkpoint import save_state_dict

        save_state_dict(self.state_dict(), d / "model.safetensors")


def _loader(kind: str):
    data = list(range(10))
    if kind == "length":  # ours: skips without reading
        sampler = LengthBatchSampler([1 + i % 3 for i in data], max_frames=9, max_batch=3, seed=0)
        loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    elif kind.startswith("stream"):  # streaming mode, in the main process or two loader workers
        workers = int(kind.split("-")[1]) if "-" in kind else 0
        lengths, shards = [1 + i % 3 for i in data], [i // 3 for i in data]
        stream = ShardStream(data, shards, lengths, torch.tensor, 9, 3, buffer=2, num_workers=workers)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers), stream.set_epoch
    else:  # torch's: skipped batches are read and discarded
        sampler = torch.utils.data.DistributedSampler(data, 1, 0, seed=0)
        loader = torch.utils.data.DataLoader(data, batch_size=3, sampler=sampler)
    return loader, sampler.set_epoch


@pytest.mark.parametrize("kind", ["length", "torch", "stream", "stream-2"])
def test_resume_sees_the_batches_and_random_numbers_of_an_uninterrupted_run(tmp_path, kind):
    """Review items 3 and 4: a job killed mid-epoch continues with the batch and the random numbers an
    uninterrupted job would have used next (not epoch 0, batch 0), and returns the whole run's metrics."""
    set_seed(3)
    full = Recorder()
    whole = Trainer(full, fast_train_config(11, save_every=5), tmp_path / "full").fit(*_loader(kind))
    assert len(full.seen) == 11 and len({str(b) for b in full.seen}) > 3  # crosses epochs
    set_seed(3)
    part = Recorder(crash_at=7)  # killed during step 8: checkpoint-5 is the last one
    with pytest.raises(Preempted):
        Trainer(part, fast_train_config(11, save_every=5), tmp_path / "part").fit(*_loader(kind))
    set_seed(99)  # a restarted process starts from another RNG state
    rest = Recorder()
    resumed = Trainer(rest, fast_train_config(11, save_every=5), tmp_path / "part").fit(*_loader(kind))
    assert len(resumed) == len(whole) == 11
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in whole])  # steps 1-5 included
    assert part.seen[:5] + rest.seen == full.seen
    assert part.draws[:5] + rest.draws == full.draws
    assert rest.w.item() == pytest.approx(full.w.item())


def test_a_time_budget_stops_training_saves_and_decays_the_learning_rate(tmp_path):
    """train.time_budget_s: the run ends at its budget with a checkpoint, the LR schedule follows the clock
    (decayed to its floor by the end), and a resumed run whose budget is spent trains no further."""

    class Slow(Recorder):
        def training_loss(self, batch):
            time.sleep(0.02)
            return super().training_loss(batch)

    cfg = fast_train_config(100_000, warmup_steps=1, save_every=10_000, time_budget_s=0.6)
    trainer = Trainer(Slow(), cfg, tmp_path)
    hist = trainer.fit(*_loader("length"))
    assert 5 < len(hist) < 100  # stopped by the clock, after some steps
    assert (tmp_path / "latest").read_text().strip() == f"checkpoint-{len(hist):08d}"
    assert hist[-1]["lr"] < 0.15 * cfg.lr < hist[len(hist) // 3]["lr"]  # cosine floor is 0.1 × lr
    again = Trainer(Slow(), cfg, tmp_path)
    assert again.fit(*_loader("length")) == hist and again.step == len(hist)  # no step more
    with pytest.raises(ValueError, match="time_budget_s"):
        Trainer(Slow(), fast_train_config(5, time_budget_s=0), tmp_path / "x")


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog):
    Trainer(Recorder(), fast_train_config(4, save_every=2), tmp_path).fit(*_loader("length"))
    (tmp_path / "checkpoint-00000004" / "train_state.pt").unlink()  # killed while saving step 4
    t = Trainer(Recorder(), fast_train_config(6, save_every=2), tmp_path)
    assert t.latest_checkpoint() == tmp_path / "checkpoint-00000002"
    assert "resuming from checkpoint-00000002" in caplog.text
    (tmp_path / "latest").write_text("checkpoint-00000099\n")  # names a folder that is gone
    assert t.latest_checkpoint() == tmp_path / "checkpoint-00000002"


def test_resume_with_no_usable_checkpoint_stops_with_a_clear_error(tmp_path):
    from mmspeech_core import CheckpointError

    tmp_path.joinpath("latest").write_text("checkpoint-00000100\n")
    with pytest.raises(CheckpointError, match="--no-resume"):
        Trainer(Recorder(), fast_train_config(2), tmp_path).fit(*_loader("length"))


def test_rotation_never_deletes_checkpoints_of_a_run_that_got_further(tmp_path):
    Trainer(Recorder(), fast_train_config(6, save_every=2, keep_checkpoints=2), tmp_path).fit(
        *_loader("length")
    )
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-00000004",
        "checkpoint-00000006",
    ]
    (tmp_path / "checkpoint-best").mkdir()  # a user's folder: not one of ours, never rotated away
    t = Trainer(Recorder(), fast_train_config(2, save_every=1, keep_checkpoints=2), tmp_path)
    t.fit(*_loader("length"), resume=False)  # a fresh run in the same folder makes no progress past them
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert "checkpoint-00000004" in names and "checkpoint-00000006" in names and "checkpoint-best" in names


def test_stale_temp_files_are_removed_on_start(tmp_path):
    (tmp_path / "checkpoint-00000002").mkdir(parents=True)
    stale = tmp_path / "checkpoint-00000002" / ".model.safetensors.abc123.tmp"
    stale.write_bytes(b"x" * 100)
    keep = tmp_path / "notes.tmp"  # not one of ours: the name does not start with '.'
    keep.write_text("mine")
    Trainer(Recorder(), fast_train_config(1), tmp_path)
    assert not stale.exists() and keep.exists()


def test_saved_files_respect_the_umask(tmp_path):
    from mmspeech_core.checkpoint import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


_WORKER = textwrap.dedent(
    """
    import json, os, random, sys
    import numpy as np, torch
    sys.path.insert(0, {tests!r})
    from test_training import Recorder, fast_train_config
    from mmspeech_core.training import Trainer, init_distributed

    mode, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    info = init_distributed("cpu")
    torch.manual_seed(info.rank); np.random.seed(info.rank); random.seed(info.rank)

    class Model(Recorder):
        def training_loss(self, batch):
            out = super().training_loss(batch)
            if mode == "nan" and info.rank == 1 and len(self.seen) == 2:
                out["loss"] = out["loss"] * float("nan")
            return out

    model = Model()
    data = torch.arange(16)[:, None].float()
    sampler = torch.utils.data.DistributedSampler(data, info.world_size, info.rank, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
    val = [torch.full((2, 1), float(k)) for k in range(5)]
    trainer = Trainer(model, fast_train_config(steps, save_every=2), out, info)
    result = {{"rank": info.rank}}
    try:
        trainer.fit(loader, sampler.set_epoch, val_loader=val)
        result["val"] = trainer.evaluate(val)
        result["w"] = model.w.item()
    except FloatingPointError as e:
        result["error"] = str(e)
    result["draws"] = model.draws
    with open(f"{{out}}/result-{{mode}}-{{steps}}-r{{info.rank}}.json", "w") as f:
        json.dump(result, f)
    # gloo's threads must stop before the interpreter does ("terminate called without an active exception"),
    # and no rank may tear its sockets down while another still finishes the last collective
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # and even then, on a loaded machine, a gloo thread could still be joinable when the interpreter's
    # teardown destroyed it (seen once in CI: exit -6 after the results were written): skip that teardown
    os._exit(0)
    """
)


def _torchrun(tmp_path, mode: str, steps: int) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    r = subprocess.run(
        [*cmd, str(script), mode, str(tmp_path / "run"), str(steps)],
        capture_output=True,
        text=True,
        timeout=120,  # a hang (one rank blocked in a collective) fails here instead of blocking CI
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((tmp_path / "run" / f"result-{mode}-{steps}-r{k}.json").read_text()) for k in (0, 1)]


def test_two_ranks_resume_their_own_random_streams(tmp_path):
    full = _torchrun(tmp_path / "full", "ok", 4)
    part = _torchrun(tmp_path, "ok", 2)
    rest = _torchrun(tmp_path, "ok", 4)
    for k in (0, 1):
        assert part[k]["draws"] + rest[k]["draws"] == full[k]["draws"]
    assert full[0]["draws"] != full[1]["draws"]  # ranks draw different numbers, also after the resume
    assert rest[0]["draws"] != rest[1]["draws"]
    # validation is sharded over the ranks and gives the single-process mean
    trained = Recorder()
    trained.w.data.fill_(full[0]["w"])
    single = Trainer(trained, fast_train_config(1), tmp_path / "single").evaluate(
        [torch.full((2, 1), float(k)) for k in range(5)]
    )
    assert full[0]["val"] == full[1]["val"] == pytest.approx(single)


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    results = _torchrun(tmp_path, "nan", 6)
    for r in results:
        assert "non-finite loss at step 1 on rank(s) [1]" in r["error"]


class Blocks(torch.nn.Module):
    """Two transformer blocks and a head: what FSDP2 shards (per block) and gathers (the rest)."""

    def __init__(self):
        super().__init__()
        from mmspeech_core.nn import TransformerBlock

        torch.manual_seed(0)
        self.inp = torch.nn.Linear(4, 16)
        self.blocks = torch.nn.ModuleList([TransformerBlock(16, 2) for _ in range(2)])
        self.head = torch.nn.Linear(16, 1)

    def training_loss(self, batch):
        x = self.inp(batch)
        mask = torch.ones(x.shape[0], x.shape[1], x.shape[1], dtype=torch.bool)
        for blk in self.blocks:
            x = blk(x, mask)
        return {"loss": (self.head(x) - batch.sum(-1, keepdim=True)).pow(2).mean()}

    def save_pretrained(self, d, state_dict=None):
        from mmspeech_core.checkpoint import save_state_dict

        save_state_dict(state_dict if state_dict is not None else self.state_dict(), d / "model.safetensors")


def _blocks_data(n=8):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 5, 4, generator=g) for _ in range(n)]


_FSDP_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_training import Blocks, _blocks_data, fast_train_config
    from mmspeech_core.training import Trainer, init_distributed

    out, steps, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    info = init_distributed("cpu")
    data = _blocks_data()
    mine = data[info.rank :: info.world_size]
    cfg = fast_train_config(steps, save_every=2, parallel="fsdp", grad_accum=2, activation_checkpointing=True)
    trainer = Trainer(Blocks(), cfg, out, info)
    trainer.fit(mine)
    with torch.no_grad():
        loss = float(trainer.loss_module(data[0])["loss"])  # a collective forward on every rank
    with open(f"{{out}}/fsdp-{{steps}}-w{{world}}-r{{info.rank}}.json", "w") as f:
        json.dump({{"loss": loss, "step": trainer.step}}, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    """
)


def _torchrun_fsdp(tmp_path, steps: int, world: int) -> list[dict]:
    script = tmp_path / "fsdp_worker.py"
    script.write_text(_FSDP_WORKER.format(tests=str(Path(__file__).parent)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(world),
        "--master_port",
        str(port),
    ]
    r = subprocess.run(
        [*cmd, str(script), str(tmp_path / "run"), str(steps), str(world)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [
        json.loads((tmp_path / "run" / f"fsdp-{steps}-w{world}-r{k}.json").read_text()) for k in range(world)
    ]


def test_fsdp_two_ranks_save_full_weights_that_load_on_one_and_resume_on_one(tmp_path):
    """Issue 14: FSDP2 on two gloo ranks (grad accumulation, activation checkpointing); the checkpoint is a
    full state dict: one process loads it with the same outputs, and the run resumes on one rank."""
    from mmspeech_core.checkpoint import load_state_dict

    two = _torchrun_fsdp(tmp_path, 4, 2)
    assert two[0]["loss"] == pytest.approx(two[1]["loss"]) and two[0]["step"] == 4
    weights = load_state_dict(tmp_path / "run" / "checkpoint-00000004" / "model.safetensors")
    single = Blocks()
    assert set(weights) == set(single.state_dict())  # plain names, no FSDP or wrapper prefixes
    single.load_state_dict(weights)
    with torch.no_grad():
        assert float(single.training_loss(_blocks_data()[0])["loss"]) == pytest.approx(
            two[0]["loss"], rel=1e-5
        )
    assert not torch.equal(weights["head.weight"], Blocks().state_dict()["head.weight"])  # it trained
    one = _torchrun_fsdp(tmp_path, 6, 1)  # resumed at step 4 on one rank, two more steps
    assert one[0]["step"] == 6
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-00000006"


def test_fsdp_on_one_process_without_torchrun_and_ddp_checkpoints_are_refused(tmp_path):
    from mmspeech_core import CheckpointError

    try:
        cfg = fast_train_config(2, parallel="fsdp")
        trainer = Trainer(Blocks(), cfg, tmp_path / "f")
        trainer.fit(_blocks_data(4))
        assert (tmp_path / "f" / "checkpoint-00000002" / "model.safetensors").is_file()
        Trainer(Blocks(), fast_train_config(2), tmp_path / "d").fit(_blocks_data(4))
        with pytest.raises(CheckpointError, match="parallel='ddp'"):
            Trainer(Blocks(), fast_train_config(3, parallel="fsdp"), tmp_path / "d").fit(_blocks_data(4))
    finally:  # the single-rank group FSDP made must not outlive the test
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_amp_runs_bf16_on_a_cpu_that_computes_it_natively_and_fp32_on_others(monkeypatch, native):
    from mmspeech_core import training

    monkeypatch.setattr(training, "cpu_has_bf16", lambda: native)
    lin, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    cpu = torch.device("cpu")
    with training.autocast(cpu, "bf16"):
        assert lin(x).dtype == (torch.bfloat16 if native else torch.float32)
    for amp in ("none", "fp16"):  # fp16 autocast is CUDA's only
        with training.autocast(cpu, amp):
            assert lin(x).dtype == torch.float32


@pytest.mark.parametrize("hardware", [True, False])
def test_bf16_amp_autocasts_on_a_gpu_that_computes_bf16_and_runs_fp32_where_it_would_be_emulated(
    monkeypatch, hardware
):
    import warnings

    from mmspeech_core import training

    monkeypatch.setattr(training, "cuda_has_bf16", lambda index: hardware)
    cuda = torch.device("cuda", 0)
    with warnings.catch_warnings():  # building a CUDA autocast on a machine without CUDA warns
        warnings.simplefilter("ignore")
        bf16, fp16 = training.autocast(cuda, "bf16"), training.autocast(cuda, "fp16")
    if hardware:
        assert isinstance(bf16, torch.autocast) and bf16.fast_dtype == torch.bfloat16
    else:
        assert isinstance(bf16, contextlib.nullcontext)
    assert isinstance(fp16, torch.autocast) and fp16.fast_dtype == torch.float16  # fp16 whatever the GPU


def test_attention_under_cpu_autocast_runs_in_fp32_and_matches_fp32():
    """Under CPU bf16 autocast SDPA would compute in bf16 (a slow backward on CPU); fp32_attention keeps it
    in fp32, with fp32 results and gradients, and passes through untouched elsewhere."""
    import torch.nn.functional as F
    from mmspeech_core.nn import fp32_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 7, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    (grad_ref,) = torch.autograd.grad(ref.sum(), q)
    assert fp32_attention(F.scaled_dot_product_attention, q, k, v, attn_mask=mask).equal(ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.scaled_dot_product_attention(q, k, v, attn_mask=mask).dtype == torch.bfloat16
        # as a bf16 projection would hand it over: v in bf16, q and k in fp32 (after a rotary embedding)
        y = fp32_attention(F.scaled_dot_product_attention, q, k, v.bfloat16(), attn_mask=mask)
    assert y.dtype == torch.float32
    assert torch.allclose(y, ref, atol=2e-2) and not y.equal(ref)  # v was rounded to bf16, nothing else
    (grad,) = torch.autograd.grad(y.sum(), q)
    assert grad.dtype == torch.float32 and torch.allclose(grad, grad_ref, atol=5e-2)
