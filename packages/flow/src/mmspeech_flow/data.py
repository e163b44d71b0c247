"""Flow training data: extracted tokens + latents (+ speaker labels) -> aligned batches with references."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mmspeech_core import Latents, SpeechTokens
from mmspeech_core.data import ReferencePicker, Utterance, holdout, load_shards
from mmspeech_core.training import Batch


def align(tokens: torch.Tensor, latents: torch.Tensor, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim (N,) tokens and (C, T) latents so T == N·ratio exactly (extractors can disagree by a frame)."""
    n = min(len(tokens), latents.shape[-1] // ratio)
    return tokens[:n], latents[:, : n * ratio]


class FlowDataset(torch.utils.data.Dataset):
    """Items: ``(tokens (N,), latents (C, N·ratio), reference latents (C, T_ref))``."""

    def __init__(
        self,
        tokens: dict[str, torch.Tensor],
        latents: dict[str, torch.Tensor],
        ratio: int,
        speakers: dict[str, str | None] | None = None,
        fallback: str = "drop",
        min_tokens: int = 1,
        seed: int = 0,
        max_self_fraction: float = 0.05,
    ) -> None:
        ids = sorted(set(tokens) & set(latents))
        if not ids:
            raise ValueError("no utterance has both tokens and latents")
        self.items = []
        for i in ids:
            tk, lt = align(tokens[i].long(), latents[i].float(), ratio)
            if len(tk) >= min_tokens:
                self.items.append((i, tk, lt))
        if not self.items:
            raise ValueError(f"no utterance has at least {min_tokens} tokens")
        speakers = speakers or {}
        self.picker = ReferencePicker(
            [speakers.get(i) for i, _, _ in self.items], fallback, seed, max_self_fraction
        )
        self.index = self.picker.usable

    @classmethod
    def from_dirs(
        cls,
        token_dir: str,
        latent_dir: str,
        ratio: int,
        utts: Sequence[Utterance] = (),
        val_fraction: float = 0.0,
        **kw: Any,
    ) -> tuple[FlowDataset, FlowDataset | None]:
        """(train, validation or None) from extracted folders; validation ids are held out by :func:`holdout`."""
        tokens, latents = load_shards(token_dir), load_shards(latent_dir)
        speakers = {u.id: u.speaker for u in utts}
        train_ids, val_ids = holdout(sorted(set(tokens) & set(latents)), val_fraction)

        def part(ids: list[str], **options: Any) -> FlowDataset:
            return cls({i: tokens[i] for i in ids}, {i: latents[i] for i in ids}, ratio, speakers, **options)

        # a held-out speaker rarely has two held-out utterances; self-references only flatter the val loss
        val = part(val_ids, fallback="self", max_self_fraction=1.0) if val_ids else None
        return part(train_ids, **kw), val

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> list[int]:
        return [int(self.items[i][2].shape[-1]) for i in self.index]

    def __getitem__(self, k: int) -> FlowItem:
        i = self.index[k]
        _, tk, lt = self.items[i]
        return FlowItem(tk, lt, self.items[self.picker(i)][2])


@dataclass
class FlowItem:
    tokens: torch.Tensor  # (N,)
    latents: torch.Tensor  # (C, N·ratio)
    reference: torch.Tensor  # (C, T_ref) latents of another utterance of the same speaker


@dataclass
class FlowBatch(Batch):
    tokens: SpeechTokens  # (B, N)
    latents: Latents  # (B, C, N·ratio)
    reference: Latents  # (B, C, T_ref)


def collate(items: list[FlowItem], token_rate: float, latent_rate: float) -> FlowBatch:
    return FlowBatch(
        SpeechTokens.from_list([x.tokens for x in items], frame_rate=token_rate),
        Latents.from_list([x.latents for x in items], frame_rate=latent_rate),
        Latents.from_list([x.reference for x in items], frame_rate=latent_rate),
    )
