"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the Trainer: sharding, activation checkpointing,
and checkpoints that are ordinary full state dicts whatever the number of ranks.

Each transformer block is its own FSDP unit (its parameters are gathered just before it runs and freed
after), and the wrapper around the model's ``training_loss`` is the root unit that holds the rest
(embeddings, heads, norms). Checkpoints are gathered to full tensors on the CPU, so a run trained on N ranks
loads on one for inference and resumes on M.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint

from .training import cuda_has_bf16

log = logging.getLogger(__name__)
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The units to shard (and checkpoint): ``model.transformer_blocks()`` where a model defines it,
    otherwise every :class:`~mmspeech_core.nn.TransformerBlock` and every Hugging Face decoder layer."""
    own = getattr(model, "transformer_blocks", None)
    if callable(own):
        return list(own())
    from .nn import TransformerBlock

    return [
        m
        for m in model.modules()
        if isinstance(m, TransformerBlock) or type(m).__name__.endswith("DecoderLayer")
    ]


def checkpoint_activations(block: nn.Module) -> None:
    """Recompute ``block``'s activations in the backward pass instead of keeping them (less memory, ~30 %
    more compute). Wraps the instance's forward, so parameter names do not change."""
    forward = block.forward
    block.forward = functools.partial(checkpoint, forward, use_reentrant=False)  # type: ignore[method-assign]


def ensure_process_group(device: torch.device) -> None:
    """FSDP2 needs a process group even on one device (outside torchrun): a single-rank one, in memory."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def shard(
    root: nn.Module, model: nn.Module, amp: str, device: torch.device, activation_checkpointing: bool
) -> None:
    """Apply FSDP2 to ``model``'s blocks and to ``root`` (the module whose forward runs a training step)."""
    ensure_process_group(device)
    bf16 = amp == "bf16" and device.type == "cuda" and cuda_has_bf16(device.index)  # as autocast() decides
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32 if bf16 else None
    )
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to shard: use parallel 'ddp'")
    for block in blocks:
        if activation_checkpointing:
            checkpoint_activations(block)
        fully_shard(block, mp_policy=policy)
    fully_shard(root, mp_policy=policy)
    log.info(
        "FSDP2: %d blocks sharded (bf16 compute: %s, activation checkpointing: %s)",
        len(blocks),
        bf16,
        activation_checkpointing,
    )


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: every rank calls it; the full tensors on the CPU (complete on rank 0)."""
    return get_model_state_dict(model, options=FULL)  # type: ignore[return-value]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: the optimizer state keyed by parameter name, full tensors on the CPU (rank 0)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)  # type: ignore[no-any-return]


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, weights: dict[str, torch.Tensor], optim: Any
) -> None:
    """Every rank loads the full state (read from the shared checkpoint) into its shards."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, dict(weights), options=options)  # type: ignore[arg-type]
    if optimizer is not None and optim is not None:
        set_optimizer_state_dict(model, optimizer, optim, options=options)
