"""Flow training data: extracted tokens + latents (+ speaker labels) -> aligned batches with references."""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mmspeech_core import Latents, SpeechTokens
from mmspeech_core.data import (
    EpochItems,
    ReferencePicker,
    Utterance,
    feature_length,
    feature_shards,
    holdout,
    load_shards,
)
from mmspeech_core.training import Batch


def align(tokens: torch.Tensor, latents: torch.Tensor, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim (N,) tokens and (C, T) latents so T == N·ratio exactly (extractors can disagree by a frame)."""
    n = min(len(tokens), latents.shape[-1] // ratio)
    return tokens[:n], latents[:, : n * ratio]


class FlowDataset(EpochItems, torch.utils.data.Dataset):
    """Items: ``(tokens (N,), latents (C, N·ratio), reference latents (C, T_ref))``.

    ``tokens`` / ``latents`` are ``id -> tensor`` mappings, typically lazy :class:`FeatureStore` folders:
    only ids and lengths are held here; an item's tensors are read when a batch needs it. Latents keep
    their stored dtype (e.g. float16) until the batch reaches the device (``Batch.to``)."""

    def __init__(
        self,
        tokens: Mapping[str, torch.Tensor],
        latents: Mapping[str, torch.Tensor],
        ratio: int,
        speakers: dict[str, str | None] | None = None,
        fallback: str = "drop",
        min_tokens: int = 1,
        seed: int = 0,
        max_self_fraction: float = 0.05,
        ids: Sequence[str] | None = None,
    ) -> None:
        ids = sorted(set(tokens) & set(latents)) if ids is None else list(ids)
        if not ids:
            raise ValueError("no utterance has both tokens and latents")
        self.tokens, self.latents, self.ratio = tokens, latents, ratio
        self.ids: list[str] = []
        self.n_tokens = array("i")  # aligned length of each item, known without reading it
        for i in ids:
            n = min(feature_length(tokens, i), feature_length(latents, i) // ratio)
            if n >= min_tokens:
                self.ids.append(i)
                self.n_tokens.append(n)
        if not self.ids:
            raise ValueError(f"no utterance has at least {min_tokens} tokens")
        speakers = speakers or {}
        self.seed = seed  # the references' (:class:`EpochItems`)
        self.picker = ReferencePicker([speakers.get(i) for i in self.ids], fallback, max_self_fraction)
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
        """(train, validation or None) from extracted folders, read lazily; validation ids are held out by
        :func:`holdout`."""
        tokens, latents = load_shards(token_dir), load_shards(latent_dir)
        speakers = {u.id: u.speaker for u in utts}
        train_ids, val_ids = holdout(sorted(set(tokens) & set(latents)), val_fraction)

        def part(ids: list[str], **options: Any) -> FlowDataset:
            return cls(tokens, latents, ratio, speakers, ids=ids, **options)

        # a held-out speaker rarely has two held-out utterances; self-references only flatter the val loss
        val = part(val_ids, fallback="self", max_self_fraction=1.0) if val_ids else None
        return part(train_ids, **kw), val

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> list[int]:
        return [self.n_tokens[i] * self.ratio for i in self.index]

    def shards(self) -> list[int]:
        """The latent shard of each item (streaming reads shard by shard; latents are most of the bytes)."""
        return feature_shards(self.latents, [self.ids[i] for i in self.index])

    def _read(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, utt = self.n_tokens[i], self.ids[i]
        return self.tokens[utt][:n].long(), self.latents[utt][:, : n * self.ratio]

    def __getitem__(self, k: int) -> FlowItem:
        i = self.index[k]
        tokens, latents = self._read(i)
        return FlowItem(tokens, latents, self._read(self.picker(i, self.item_rng(k)))[1])


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
