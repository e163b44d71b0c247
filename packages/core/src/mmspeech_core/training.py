"""Shared training harness: seeds, torchrun/DDP set-up, AMP, gradient clipping, tensorboard,
resumable checkpoints. Stages plug in a model exposing ``training_loss(batch) -> dict[str, Tensor]``
(with a ``"loss"`` entry) and ``save_pretrained(dir)``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_text,
    load_state_dict,
    remove_stale_temp_files,
)
from .types import _Padded

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimiser and loop settings common to every stage."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 1000
    max_steps: int = 100_000
    grad_clip: float = 1.0
    # mixed precision of the forward pass (weights, gradients and optimiser state stay fp32): "bf16" on CUDA
    # and on a CPU with native bf16 (AVX512-BF16 / AMX; other CPUs run fp32), "fp16" on CUDA only
    amp: Literal["none", "bf16", "fp16"] = "bf16"
    log_every: int = 50
    save_every: int = 2000
    eval_every: int = 2000  # validation (when a validation set is given); also at the last step
    keep_checkpoints: int = 3
    seed: int = 1234
    num_workers: int = 2
    max_frames: int = 20_000  # dynamic batching: padded frames per batch per GPU
    max_batch: int = 64
    ddp_find_unused: bool = False  # True only for models that skip parameters on some steps (slower)
    # "fsdp": FSDP2 under torchrun (each transformer block its own unit; bf16 compute with amp "bf16");
    # checkpoints are full state dicts either way, so they load on any number of ranks
    parallel: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    grad_accum: int = 1  # batches per optimiser step (the effective batch is grad_accum × max_frames × ranks)
    # stop after this many seconds of training even before max_steps (the learning rate then follows the
    # clock: its schedule runs on max(step / max_steps, seconds / budget), so it has decayed by the end);
    # training with a budget is not bit-reproducible, since where it stops depends on the machine
    time_budget_s: float | None = None
    # "map": random access to the feature shards (batches drawn from the whole corpus each epoch);
    # "stream": shards read one after another through a shuffle buffer of stream_buffer items per loader
    # worker, for storage without fast random access (see mmspeech_core.data.ShardStream)
    data: Literal["map", "stream"] = "map"
    stream_buffer: int = 1000


def fast_train_config(steps: int, lr: float, **overrides: Any) -> TrainConfig:
    """A short CPU run (tests, the quickstart): fp32, no loader workers, 10 % warm-up, a checkpoint at the
    end, five log lines. ``overrides`` set any other :class:`TrainConfig` field."""
    settings: dict[str, Any] = dict(
        lr=lr,
        warmup_steps=max(1, steps // 10),
        max_steps=steps,
        log_every=max(1, steps // 5),
        save_every=steps,
        num_workers=0,
        amp="none",
    )
    return TrainConfig(**(settings | overrides))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_seeds(seed: int | Sequence[int | None] | None, batch: int) -> list[int | None]:
    """Per-item seeds for a batch: ``None`` (unseeded), an int (item i gets ``seed + i``) or one per item.

    Items drawing from their own seeded generators make batched output equal unbatched output."""
    if seed is None:
        return [None] * batch
    seeds: list[int | None] = [seed + i for i in range(batch)] if isinstance(seed, int) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    return seeds


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when available, else ``cpu``."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def init_distributed(device: str | None = None) -> DistInfo:
    """Reads torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK); NCCL on CUDA, gloo on CPU. Works unlaunched too."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(default_device(device))
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


@functools.cache  # asked by autocast() on every training forward; the hardware does not change
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there oneDNN's bf16 matrix products
    are several times fp32's (measured on a 1-core AMX CPU, (4096 x 128) @ (128 x 512): 0.67 ms against
    6.1 ms); elsewhere bf16 is emulated and slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence looked up with care
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@functools.cache  # per device, asked on every training forward
def cuda_has_bf16(index: int | None) -> bool:
    """Whether CUDA device ``index`` (None: the current one) computes bf16 in hardware (compute capability
    8.0 or newer, Ampere on); torch emulates it on older GPUs, slower than fp32."""
    with torch.cuda.device(index):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """The training forward's precision (:attr:`TrainConfig.amp`): fp16 autocast on CUDA; bf16 autocast on
    a GPU that computes bf16 in hardware (:func:`cuda_has_bf16`) or a CPU that computes it natively
    (:func:`cpu_has_bf16`); fp32 otherwise, where bf16 would be emulated and slower than fp32."""
    if amp == "none":
        return contextlib.nullcontext()
    if device.type == "cuda" and (amp == "fp16" or cuda_has_bf16(device.index)):
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    if device.type == "cpu" and amp == "bf16" and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up then cosine to 10 %."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    p = min(1.0, (step - warmup) / max(total - warmup, 1))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


HALF = (torch.float16, torch.bfloat16)


def init_weights_dir(path: str | os.PathLike[str], stage: str) -> Path:
    """The weights folder to fine-tune ``stage`` from: a bundle's ``<bundle>/<stage>``, a run folder's
    ``latest`` checkpoint, or a checkpoint folder itself."""
    p = Path(path)
    if (p / stage / "model.safetensors").is_file():
        return p / stage
    if (p / "latest").is_file():
        return p / (p / "latest").read_text().strip()
    if (p / "model.safetensors").is_file():
        return p
    raise FileNotFoundError(
        f"{p} is neither a bundle with a {stage}/ part, a run folder with a 'latest' checkpoint, "
        "nor a checkpoint folder (model.safetensors)"
    )


def freeze(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Stop training the parameters whose names start with any of ``prefixes`` (e.g. ``backbone``);
    returns how many parameters were frozen. A prefix that names nothing is an error (a typo would
    silently train everything)."""

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(under(n, prefix) for n in names):
            top = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"--freeze {prefix!r} names no parameter; top-level parts: {top}")
    frozen = 0
    for n, p in model.named_parameters():
        if any(under(n, pre) for pre in prefixes):
            p.requires_grad_(False)
            frozen += p.numel()
    log.info("froze %d parameters under %s", frozen, list(prefixes))
    return frozen


def move_to(batch: Any, device: torch.device) -> Any:
    """Recursively move tensors (and typed containers with ``.to``) onto ``device``. Features stored in
    half precision become float32 there, on the device (AMP, where enabled, casts down again)."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=device.type != "cpu")  # see _Padded.to
        return batch.float() if batch.dtype in HALF else batch
    if isinstance(batch, _Padded):
        return batch.to(device, torch.float32)
    if hasattr(batch, "to") and not isinstance(batch, nn.Module):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def _pin(x: Any) -> Any:
    if isinstance(x, (torch.Tensor, _Padded, Batch)):
        return x.pin_memory()
    if isinstance(x, dict):
        return {k: _pin(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_pin(v) for v in x)
    return x


class Batch:
    """Base of the stages' typed training batches (dataclasses): ``.to(device)`` moves every field."""

    def pin_memory(self) -> Any:
        """Every tensor in page-locked memory (a DataLoader with ``pin_memory=True`` calls this), so the
        copy to the GPU runs beside the compute."""
        assert dataclasses.is_dataclass(self)
        fields = {f.name: _pin(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **fields)  # type: ignore[type-var]

    def to(self, device: torch.device | str) -> Any:
        assert dataclasses.is_dataclass(self)
        fields = {
            f.name: move_to(getattr(self, f.name), torch.device(device)) for f in dataclasses.fields(self)
        }
        return dataclasses.replace(self, **fields)  # type: ignore[type-var]


def train_loader(
    dataset: Any,
    collate: Callable[[list[Any]], Any],
    cfg: TrainConfig,
    info: DistInfo,
) -> tuple[torch.utils.data.DataLoader[Any], Callable[[int], None]]:
    """The training DataLoader of a feature dataset (one with ``lengths()`` and ``shards()``) and its
    ``set_epoch``: length-bucketed batches drawn from the whole corpus (``cfg.data == "map"``) or read shard
    by shard (``"stream"``, :class:`~mmspeech_core.data.ShardStream`); this rank's share either way, in
    page-locked memory when training on a GPU. ``set_epoch`` also reaches the dataset where it has one
    (:class:`~mmspeech_core.data.EpochItems`)."""
    from .data import LengthBatchSampler, ShardStream

    pin = info.device.type == "cuda"
    if cfg.data == "stream":
        stream = ShardStream(
            dataset,
            dataset.shards(),
            dataset.lengths(),
            collate,
            cfg.max_frames,
            cfg.max_batch,
            cfg.stream_buffer,
            cfg.seed,
            info.rank,
            info.world_size,
            cfg.num_workers,
        )
        loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=cfg.num_workers, pin_memory=pin
        )
        return loader, epoch_setter(stream.set_epoch, dataset)
    if cfg.data != "map":
        raise ValueError(f"train.data must be 'map' or 'stream', got {cfg.data!r}")
    sampler = LengthBatchSampler(
        dataset.lengths(), cfg.max_frames, cfg.max_batch, True, cfg.seed, info.rank, info.world_size
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate, pin_memory=pin
    )
    return loader, epoch_setter(sampler.set_epoch, dataset)


def epoch_setter(set_epoch: Callable[[int], None], dataset: Any) -> Callable[[int], None]:
    """``set_epoch`` (a sampler's), then the dataset's own where it has one (for :meth:`Trainer.fit`).
    Loader workers see the new epoch: they start afresh, with a copy of the dataset, at every iteration."""
    if not hasattr(dataset, "set_epoch"):
        return set_epoch

    def both(epoch: int) -> None:
        set_epoch(epoch)
        dataset.set_epoch(epoch)

    return both


class _LossModule(nn.Module):
    """DDP hooks run on ``forward``; route ``training_loss`` through it so gradients are all-reduced."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.model.training_loss(batch)  # type: ignore[operator]


@dataclass
class DataPosition:
    """Where the data stream stands: the epoch, and how many of its batches were consumed."""

    epoch: int = 0
    batch: int = 0


def _skip_in_sampler(loader: Iterable[Any], skip: int) -> bool:
    """Ask the loader's batch sampler (or streaming dataset) to start ``skip`` batches in (no data is read
    for them)."""
    planner = getattr(loader, "batch_sampler", None) or getattr(loader, "dataset", None)
    set_start = getattr(planner, "set_start", None)
    if skip and set_start is not None:
        set_start(skip)
        return True
    return False


def infinite(
    loader: Iterable[Any],
    set_epoch: Callable[[int], None] | None = None,
    start: DataPosition | None = None,
    seed: int = 0,
) -> Iterator[tuple[DataPosition, Any]]:
    """Batches forever, each with the position *after* it, starting at ``start`` (a resumed run continues
    with the batch an uninterrupted run would have read next). Samplers with ``set_start`` skip without
    reading; any other loader is read and its first batches discarded.

    A torch DataLoader draws its workers' base seed from the global RNG each time it is iterated, so a
    resumed run (which starts iterating mid-epoch) would shift every later random number; here the draw
    comes from a generator keyed by ``(seed, epoch)`` instead, and the global stream is left alone."""
    epoch, skip = (start.epoch, start.batch) if start else (0, 0)
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        if isinstance(loader, torch.utils.data.DataLoader):
            loader.generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        n = skip if _skip_in_sampler(loader, skip) else 0
        for b in loader:
            n += 1
            if n <= skip:
                continue
            yield DataPosition(epoch, n), b
        if n == 0:
            raise ValueError("the training data loader yielded no batch (empty dataset?)")
        epoch, skip = epoch + 1, 0


def _checkpoint_step(d: Path) -> int:
    return int(d.name.rsplit("-", 1)[1])


def _checkpoints(out: Path) -> list[Path]:
    """``checkpoint-<step>`` folders of a run (other names, a user's ``checkpoint-best`` say, are not ours)."""
    return [d for d in out.glob("checkpoint-*") if d.is_dir() and d.name.split("-", 1)[1].isdigit()]


def _is_complete(d: Path) -> bool:
    """A checkpoint is complete once rank 0 wrote ``train_state.pt``, its last file."""
    return (d / "train_state.pt").is_file() and (d / "model.safetensors").is_file()


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class Trainer:
    """Single- or multi-GPU loop with resumable state under ``out_dir``:

    ``out_dir/checkpoint-<step>/`` (pretrained dir + ``train_state.pt`` + ``rng-r<rank>.pt`` per rank),
    ``out_dir/latest`` (name of the newest), ``out_dir/tb/`` (tensorboard). ``fit`` resumes from ``latest``
    (or, if that is missing or incomplete, the newest complete checkpoint) and continues the data where it
    stopped: a resumed run sees the same batches and random numbers as an uninterrupted one.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out_dir: str | os.PathLike[str],
        dist_info: DistInfo | None = None,
        params: Iterable[nn.Parameter] | None = None,
        on_log: Callable[[Any, int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.out = Path(out_dir)
        self.model = model.to(self.dist.device)
        self.loss_module: nn.Module = _LossModule(self.model)
        if cfg.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {cfg.grad_accum}")
        self.fsdp = cfg.parallel == "fsdp"
        if self.fsdp:
            from .parallel import shard

            shard(self.loss_module, self.model, cfg.amp, self.dist.device, cfg.activation_checkpointing)
        elif cfg.activation_checkpointing:
            from .parallel import checkpoint_activations, transformer_blocks

            for block in transformer_blocks(self.model):
                checkpoint_activations(block)
        if self.dist.world_size > 1 and not self.fsdp:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=ids, find_unused_parameters=cfg.ddp_find_unused
            )
        trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        if cfg.time_budget_s is not None and cfg.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive, got {cfg.time_budget_s}")
        self.elapsed_before = 0.0  # seconds trained by the runs this one resumed
        self.started = time.monotonic()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(self._schedule_step(s), cfg.warmup_steps, cfg.max_steps)
        )
        use_scaler = cfg.amp == "fp16" and self.dist.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.step = 0
        self.position = DataPosition()
        # every step's metrics since step 1, resumed runs included: saved with each checkpoint (a few floats a
        # step), so a resumed run's history is an uninterrupted one's
        self.history: list[dict[str, float]] = []
        self.on_log = on_log
        self.writer = None
        if self.dist.is_main:
            if self.out.is_dir() and (n := remove_stale_temp_files(self.out)):
                log.info("removed %d temp file(s) left in %s by an interrupted run", n, self.out)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))

    # ---- checkpoints ------------------------------------------------------------------------------
    def save(self) -> Path:
        """Every rank writes its RNG state; then rank 0 writes the weights and ``train_state.pt`` (which
        marks the checkpoint complete), points ``latest`` at it and rotates old checkpoints."""
        d = self.out / f"checkpoint-{self.step:08d}"
        atomic_torch_save(_rng_state(), d / f"rng-r{self.dist.rank}.pt")
        self._barrier()
        weights = optimizer = None
        if self.fsdp:  # gathering the shards is a collective: every rank takes part, rank 0 writes
            from .parallel import full_model_state, full_optimizer_state

            weights = full_model_state(self.model)
            optimizer = {"full": full_optimizer_state(self.model, self.optimizer)}
        if self.dist.is_main:
            extra = {"state_dict": weights} if weights is not None else {}
            self.model.save_pretrained(d, **extra)  # type: ignore[operator]
            state = {
                "step": self.step,
                "epoch": self.position.epoch,
                "batch": self.position.batch,
                "world_size": self.dist.world_size,
                "parallel": self.cfg.parallel,
                "optimizer": optimizer if optimizer is not None else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "elapsed_s": self.elapsed(),
                "history": self.history,
                **self.extra_state(),
            }
            atomic_torch_save(state, d / "train_state.pt")
            atomic_write_text(self.out / "latest", d.name + "\n")
            self._rotate(d)
        self._barrier()
        return d

    def _rotate(self, current: Path) -> None:
        """Keep the newest ``keep_checkpoints`` complete checkpoints up to this step. Checkpoints of a later
        step (an earlier run of this folder that got further) are never deleted: they may be the only good
        ones; incomplete ones older than this step are crash leftovers and go."""
        older = [d for d in _checkpoints(self.out) if d != current and _checkpoint_step(d) <= self.step]
        complete = sorted((d for d in older if _is_complete(d)), key=_checkpoint_step)
        keep = complete[max(0, len(complete) - (self.cfg.keep_checkpoints - 1)) :]
        for old in older:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def extra_state(self) -> dict[str, Any]:
        """Subclasses add state of their own (a discriminator and its optimiser, say)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``latest`` names; if that one is missing or incomplete, the newest complete one
        (said in the log). None for a fresh run; a run folder whose checkpoints are all unusable raises."""
        pointer = self.out / "latest"
        named = self.out / pointer.read_text().strip() if pointer.is_file() else None
        if named is not None and _is_complete(named):
            return named
        complete = sorted((d for d in _checkpoints(self.out) if _is_complete(d)), key=_checkpoint_step)
        if complete:
            log.warning(
                "%s: 'latest' names %s, which is missing or incomplete; resuming from %s instead",
                self.out,
                named.name if named else "nothing",
                complete[-1].name,
            )
            return complete[-1]
        if named is not None:
            raise CheckpointError(
                f"{self.out}: 'latest' names {named.name}, which is missing or incomplete, and no other "
                "complete checkpoint exists; pass --no-resume (or use a new --out) to start over"
            )
        return None

    def resume(self, directory: Path) -> None:
        try:
            state = torch.load(
                directory / "train_state.pt",
                map_location="cpu" if self.fsdp else self.dist.device,
                weights_only=False,
            )
        except Exception as e:
            raise CheckpointError(f"cannot read training state in {directory}: {e}") from e
        if state.get("parallel", "ddp") != self.cfg.parallel:
            raise CheckpointError(
                f"{directory} was trained with parallel={state.get('parallel', 'ddp')!r}, this run uses "
                f"{self.cfg.parallel!r}: its optimiser state does not carry over (start a new run with "
                "--init-from to keep the weights)"
            )
        if self.fsdp:
            from .parallel import load_full_state

            weights = load_state_dict(directory / "model.safetensors", "cpu")
            load_full_state(self.model, self.optimizer, weights, state["optimizer"]["full"])
        else:
            self.model.load_state_dict(load_state_dict(directory / "model.safetensors", self.dist.device))
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.load_extra_state(state)
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.history = list(state.get("history", []))  # (checkpoints from before it was saved: none)
        self.position = DataPosition(int(state.get("epoch", 0)), int(state.get("batch", 0)))
        rng = directory / f"rng-r{self.dist.rank}.pt"
        if rng.is_file() and state.get("world_size", 1) == self.dist.world_size:
            _set_rng_state(torch.load(rng, weights_only=False))
        else:  # another world size: fresh, distinct per-rank streams
            set_seed(self.cfg.seed + self.dist.rank + 1_000_003 * self.step)
            log.warning("no RNG state for rank %d in %s: reseeded", self.dist.rank, directory)
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            directory,
            self.step,
            *vars(self.position).values(),
        )

    # ---- time budget ------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds of training in this run folder, resumed runs included."""
        return self.elapsed_before + time.monotonic() - self.started

    def _schedule_step(self, step: int) -> int:
        """The step the LR schedule sees: with a time budget, the further of the step and the clock."""
        budget = self.cfg.time_budget_s
        if budget is None:
            return step
        return max(step, int(self.cfg.max_steps * min(1.0, self.elapsed() / budget)))

    def out_of_time(self) -> bool:
        """True once the time budget is spent; every rank gets rank 0's answer (ranks that stopped at
        different steps would hang in the next collective)."""
        if self.cfg.time_budget_s is None:
            return False
        over = torch.tensor([float(self.elapsed() >= self.cfg.time_budget_s)], device=self.dist.device)
        if self.dist.world_size > 1:
            torch.distributed.broadcast(over, src=0)
        return bool(over.item())

    # ---- distributed helpers ------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            dist.barrier()

    def check_finite(self, loss: torch.Tensor, what: str = "loss") -> None:
        """Raise on every rank if ``loss`` is not finite on any rank. One rank raising alone would leave
        the others blocked in the gradient all-reduce until the collective timeout."""
        bad = torch.zeros(self.dist.world_size, device=loss.device)
        bad[self.dist.rank] = (~torch.isfinite(loss.detach())).float()
        if self.dist.world_size > 1:
            dist.all_reduce(bad)
        if bad.any():
            ranks = bad.nonzero().flatten().tolist()
            raise FloatingPointError(f"non-finite {what} at step {self.step} on rank(s) {ranks}")

    # ---- loop -------------------------------------------------------------------------------------
    def compute_losses(self, batch: Any) -> dict[str, torch.Tensor | float]:
        """The losses of one training batch, with the ``"loss"`` to minimise (the model's ``training_loss``
        through DDP). The hook for a stage with more to do per step: a GAN runs its discriminator's step
        here and adds the adversarial terms; the backward, clipping, optimiser and scheduler stay shared."""
        with autocast(self.dist.device, self.cfg.amp):
            return self.loss_module(batch)  # type: ignore[no-any-return]

    def train_step(self, batch: Any, *more: Any) -> dict[str, float]:
        """One optimiser step over ``batch`` (and, with gradient accumulation, the ``more`` batches after
        it): gradients are averaged over them and synchronised across ranks once, after the last."""
        self.loss_module.train()
        self.optimizer.zero_grad(set_to_none=True)
        batches = (batch, *more)
        sums: dict[str, float] = {}
        for k, b in enumerate(batches):
            with self._gradient_sync(k == len(batches) - 1):
                losses = self.compute_losses(move_to(b, self.dist.device))
                loss = losses["loss"]
                assert isinstance(loss, torch.Tensor)
                self.check_finite(loss)
                self.scaler.scale(loss / len(batches)).backward()
            for name, v in losses.items():
                sums[name] = sums.get(name, 0.0) + (
                    float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                )
        self.scaler.unscale_(self.optimizer)
        gnorm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if hasattr(gnorm, "full_tensor"):  # FSDP2: the norm is a DTensor
            gnorm = gnorm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        out = {k: v / len(batches) for k, v in sums.items()}
        out["grad_norm"] = float(gnorm)
        out["lr"] = float(self.scheduler.get_last_lr()[0])
        return out

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Accumulating micro-batches skip the gradient all-reduce / reduce-scatter until the last."""
        if self.dist.world_size == 1 or sync:
            if self.fsdp:
                self.loss_module.set_requires_gradient_sync(True)  # type: ignore[operator]
            return contextlib.nullcontext()
        if self.fsdp:
            self.loss_module.set_requires_gradient_sync(False)  # type: ignore[operator]
            return contextlib.nullcontext()
        return self.loss_module.no_sync()  # type: ignore[operator]

    # ---- validation ---------------------------------------------------------------------------------
    def val_step(self, batch: Any) -> dict[str, float]:
        """Metrics of one validation batch (subclasses may report other things than the training loss).
        Through the root module: under FSDP its forward gathers the parameters outside the blocks."""
        with autocast(self.dist.device, self.cfg.amp), torch.no_grad():
            return {k: float(v) for k, v in self.loss_module(batch).items()}

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Mean metrics over ``loader``, eval mode. Batch k runs on rank k mod world with the RNG seeded by k
        (losses that sample t / noise / prompts compare from one evaluation to the next, whatever the number
        of ranks); every rank takes part, so none waits on a collective while another validates alone."""
        self.model.eval()
        totals: dict[str, float] = {}
        n = 0
        with torch.random.fork_rng(devices=[self.dist.device] if self.dist.device.type == "cuda" else []):
            last = None
            for k, batch in enumerate(loader):
                if k % self.dist.world_size != self.dist.rank:
                    continue
                torch.manual_seed(self.cfg.seed + k)
                last = move_to(batch, self.dist.device)
                for name, v in self.val_step(last).items():
                    totals[name] = totals.get(name, 0.0) + v
                n += 1
            if self.fsdp:  # every forward is a collective: ranks with fewer batches run extra, discarded ones
                counts = torch.tensor([n], device=self.dist.device)
                dist.all_reduce(counts, op=dist.ReduceOp.MAX)
                for _ in range(int(counts) - n):
                    if last is not None:
                        self.val_step(last)
        self.model.train()
        if self.dist.world_size > 1:
            parts: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(parts, (totals, n))
            totals, n = {}, 0
            for part_totals, part_n in parts:
                for name, v in part_totals.items():
                    totals[name] = totals.get(name, 0.0) + v
                n += part_n
        if n == 0:
            raise ValueError("the validation loader yielded no batch")
        return {k: v / n for k, v in totals.items()}

    def fit(
        self,
        loader: Iterable[Any],
        set_epoch: Callable[[int], None] | None = None,
        resume: bool = True,
        val_loader: Iterable[Any] | None = None,
    ) -> list[dict[str, float]]:
        """Train until ``cfg.max_steps`` (or ``cfg.time_budget_s``); returns the per-step metrics of the run,
        from its first step, the runs it resumed included (steps that ran a validation also hold
        ``val/<metric>`` entries)."""
        if resume and (ck := self.latest_checkpoint()) is not None:
            self.resume(ck)
        self.started = time.monotonic()  # the budget counts training, not the set-up before it
        it = infinite(loader, set_epoch, self.position, self.cfg.seed)
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            desc=f"train {self.out.name}",  # which run: two can share a terminal (the quickstart's jobs)
            disable=not self.dist.is_main,
        )
        done = self.step >= self.cfg.max_steps or self.out_of_time()
        while not done:
            batches = []
            for _ in range(self.cfg.grad_accum):
                self.position, batch = next(it)
                batches.append(batch)
            metrics = self.train_step(*batches)
            self.history.append(metrics)
            bar.update(1)
            done = last = self.step == self.cfg.max_steps or self.out_of_time()
            if self.step % self.cfg.log_every == 0 or last:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                self._log_scalars("train", metrics)
                if self.writer is not None and self.on_log is not None:
                    self.on_log(self.writer, self.step)
            if val_loader is not None and (self.step % self.cfg.eval_every == 0 or last):
                val = self.evaluate(val_loader)
                metrics.update({f"val/{k}": v for k, v in val.items()})
                self._log_scalars("val", val)
                if self.dist.is_main:
                    bar.write(f"step {self.step}: " + ", ".join(f"val {k} {v:.4f}" for k, v in val.items()))
            if self.step % self.cfg.save_every == 0 or last:
                self.save()
        bar.close()
        if self.step < self.cfg.max_steps:
            log.info(
                "time budget of %.0f s spent at step %d of %d", self.elapsed(), self.step, self.cfg.max_steps
            )
        if self.writer is not None:
            self.writer.flush()
        return self.history

    def _log_scalars(self, namespace: str, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"{namespace}/{k}", v, self.step)
