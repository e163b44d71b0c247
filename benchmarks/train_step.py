"""Seconds a training step of each quickstart stage, in fp32 and under bf16 autocast (the quickstart's
``--precision``; ``TrainConfig.amp``).

    uv run --no-sync python benchmarks/train_step.py                       # medium, 1 thread (side by side)
    uv run --no-sync python benchmarks/train_step.py --size tiny --threads 2

Each stage's model is the recipe's for ``--size`` (``mmspeech_pipeline.recipe``), fed random batches of
about the recipe's padded frames (utterances of 2-5 s); a step is forward, backward and AdamW, best of
``--repeat``. The VAE's row is its generator's forward under autocast and an L1 loss outside it (its
trainer computes the mel loss outside autocast too, the same either way). bf16 runs through
``mmspeech_core.training.autocast``, so on a CPU without native bf16 (:func:`cpu_has_bf16` False) both
columns are fp32. One thread is what each of the recipe's two side-by-side trainings gets on 2 cores.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from typing import Any

import torch
from mmspeech_core.training import autocast, cpu_has_bf16
from mmspeech_core.types import Latents, SpeechTokens
from mmspeech_flow.data import FlowBatch
from mmspeech_flow.model import FlowModel
from mmspeech_llm.data import LLMBatch
from mmspeech_llm.layout import pad, training_sequence
from mmspeech_llm.model import SpeechLM
from mmspeech_pipeline.recipe import (
    SIZES,
    QuickstartSize,
    _flow_config,
    _llm_config,
    _tokenizer_config,
    vae_config,
)
from mmspeech_tokenizer.data import CTCBatch
from mmspeech_tokenizer.model import FSQTokenizer
from mmspeech_vae.model import DACVAE
from run import table, timeit
from torch import nn

TOKEN_RATE = 25  # speech tokens a second
MEL_RATE = 100  # the tokenizer's log-mel frames a second (4x its tokens)
# a case: the stage's model, a batch, and its loss given (model, batch, the forward's autocast context)
Case = tuple[nn.Module, Any, Callable[[nn.Module, Any, Any], torch.Tensor]]


def _lengths(n: int, seconds: tuple[float, float], rate: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.uniform(*seconds) * rate) for _ in range(n)]


def _loss(m: nn.Module, b: Any, amp: Any) -> torch.Tensor:
    with amp:
        return m.training_loss(b)["loss"]  # type: ignore[no-any-return]


def tokenizer_case(size: QuickstartSize, g: torch.Generator) -> Case:
    cfg = _tokenizer_config(size, list("abcdefghijklmnopqrstuvwxyz '.,?!"))
    lens = _lengths(8000 // (5 * MEL_RATE), (2.0, 5.0), MEL_RATE, 0)  # the recipe's 8,000 frames a batch
    labels = torch.randint(1, 30, (len(lens), 50), generator=g)
    mel = torch.randn(len(lens), cfg.model.n_mels, max(lens), generator=g)
    batch = CTCBatch(mel, torch.tensor(lens), labels, torch.full((len(lens),), 50))
    return FSQTokenizer(cfg), batch, _loss


def vae_case(size: QuickstartSize, g: torch.Generator) -> Case:
    cfg = vae_config(size)
    audio = 0.1 * torch.randn(
        cfg.train.max_batch, int(cfg.loss.segment_s * cfg.model.sample_rate), generator=g
    )

    def loss(m: nn.Module, b: torch.Tensor, amp: Any) -> torch.Tensor:
        with amp:
            out = m(b, sample=True)
        return (out["recon"].float() - b).abs().mean() + out["kl"].float()

    return DACVAE(cfg), audio, loss


def llm_case(size: QuickstartSize, g: torch.Generator) -> Case:
    cfg = _llm_config(size, 500, 3**size.fsq_dims)
    lens = _lengths(size.max_frames // (5 * TOKEN_RATE), (2.0, 5.0), TOKEN_RATE, 0)
    seqs = [
        training_sequence(
            torch.randint(0, 500, (n // 3,), generator=g),
            torch.randint(0, 3**size.fsq_dims, (n,), generator=g),
            eos=cfg.model.eos,
            fill=cfg.model.fill,
            bistream_prob=cfg.layout.bistream_prob,
            min_ratio=0.0,
            rng=random.Random(i),
        )
        for i, n in enumerate(lens)
    ]
    frames = 3 * 100  # a 3 s reference's log-mels
    mels = torch.randn(len(lens), cfg.model.spk_mels, frames, generator=g)
    batch = LLMBatch(pad(seqs), mels, torch.full((len(lens),), frames))
    return SpeechLM(cfg), batch, _loss


def flow_case(size: QuickstartSize, g: torch.Generator) -> Case:
    vcfg = vae_config(size)
    c = vcfg.model.latent_dim
    cfg = _flow_config(size, 3**size.fsq_dims, vcfg, {"mean": [0.0] * c, "std": [1.0] * c})
    lens = _lengths(size.max_frames // (5 * TOKEN_RATE), (2.0, 5.0), TOKEN_RATE, 0)
    tokens = [torch.randint(0, 3**size.fsq_dims, (n,), generator=g) for n in lens]
    latents = [torch.randn(c, n * cfg.model.ratio, generator=g) for n in lens]
    batch = FlowBatch(
        SpeechTokens.from_list(tokens), Latents.from_list(latents), Latents.from_list(latents[::-1])
    )
    return FlowModel(cfg), batch, _loss


CASES: dict[str, Callable[[QuickstartSize, torch.Generator], Case]] = {
    "tokenizer": tokenizer_case,
    "vae": vae_case,
    "llm": llm_case,
    "flow": flow_case,
}


def step_seconds(stage: str, size: QuickstartSize, amp: str, repeat: int) -> tuple[float, float]:
    """(best seconds of a step, its first loss) for ``stage`` at ``amp``, from the same weights and batch."""
    torch.manual_seed(0)
    model, batch, loss_of = CASES[stage](size, torch.Generator().manual_seed(0))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model, batch, autocast(torch.device("cpu"), amp))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    return timeit(step, "cpu", repeat), losses[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="medium")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stages", nargs="+", choices=list(CASES), default=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    rows = []
    for stage in args.stages:
        fp32, loss32 = step_seconds(stage, size, "none", args.repeat)
        bf16, loss16 = step_seconds(stage, size, "bf16", args.repeat)
        rows.append([stage, fp32, bf16, f"{fp32 / bf16:.2f}x", loss32, loss16])
    title = f"training step, size {args.size}, {args.threads} thread(s), CPU native bf16: {cpu_has_bf16()}"
    table(title, ["stage", "fp32 s", "bf16 s", "speed-up", "fp32 loss", "bf16 loss"], rows)


if __name__ == "__main__":
    main()
