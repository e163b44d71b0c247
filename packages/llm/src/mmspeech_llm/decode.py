"""KV-cache decoders for the LM's generation loop.

- ``dynamic``: transformers' DynamicCache, a 2-D padding mask; works everywhere.
- ``static``: a preallocated StaticCache and 4-D boolean masks we build ourselves, so every decode step has
  the same shapes and no host sync.
- ``cuda_graph``: ``static`` with the decode step captured once as a CUDA graph and replayed: the 24-layer
  step then costs one launch instead of hundreds (the eager loop is launch-bound at 0.5B size).
- ``compiled``: ``cuda_graph`` with the decode step compiled by ``torch.compile`` (inductor fuses the
  norms, rotary embeddings, activations and residual adds, so the graph holds fewer, larger kernels) before
  it is captured. Compiling costs time once per (batch, capacity) shape; bf16 rounding may differ from
  the eager kernels, so sampled tokens can differ from ``cuda_graph``'s for the same seed.
- ``auto`` (the default): ``cuda_graph`` on CUDA, ``dynamic`` elsewhere.

Static decoders are kept between requests (:class:`DecoderPool`, one per model): a request of a batch size
and capacity bucket seen before reuses that decoder's cache and captured graph, so only the first pays for
the warm-up steps and the capture (on an H100, base preset, the LM's part of the first streamed chunk was
237 ms with a capture per request; not re-measured since).

Measured on one H100 (0.5B, bf16, 128 tokens): batch 1 33 -> 235 tokens/s, batch 8 284 -> 1826 tokens/s.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import torch
import transformers
from transformers import DynamicCache, StaticCache

DecodeMode = Literal["auto", "dynamic", "static", "cuda_graph", "compiled"]


class DynamicDecoder:
    def __init__(self, model: Any, emb: torch.Tensor, mask: torch.Tensor, steps: int) -> None:
        """emb: (B, L, H) left-padded prefix embeddings, mask: (B, L) bool."""
        self.model, self.mask, self.cache = model, mask, DynamicCache()
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        self.pos = positions[:, -1:]
        self.logits = self._logits(emb, positions)

    def release(self) -> None:
        """Nothing to hand back: every request makes its own cache."""

    def _logits(self, emb: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model.backbone(
            inputs_embeds=emb,
            attention_mask=self.mask.long(),
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        return self.model.head(out.last_hidden_state[:, -1]).float()

    def step(self, emb: torch.Tensor) -> torch.Tensor:
        """emb: (B, 1, H) of the token just sampled -> logits (B, V) for the next one."""
        b = emb.shape[0]
        self.mask = torch.cat([self.mask, torch.ones(b, 1, dtype=torch.bool, device=emb.device)], 1)
        self.pos = self.pos + 1
        return self._logits(emb, self.pos)


class StaticDecoder:
    """A preallocated StaticCache of ``capacity`` positions for ``batch`` rows and the 4-D masks we build, so
    every decode step has the same shapes and no host sync. Reusable: :meth:`start` begins a request on the
    same buffers, so with ``graph`` the step is captured once, at the first request, and later requests
    replay it (no warm-up steps, no capture; :class:`DecoderPool` keeps decoders between requests)."""

    def __init__(
        self,
        model: Any,
        batch: int,
        capacity: int,
        hidden: torch.Tensor,
        graph: bool = False,
        compiled: bool = False,
    ) -> None:
        """``hidden``: any (..., H) tensor of the embeddings' dtype and device."""
        dev = hidden.device
        if (graph or compiled) and dev.type != "cuda":
            raise ValueError("decode='cuda_graph' / 'compiled' need a CUDA model")
        self.model, self.capacity, self.wants_graph = model, capacity, graph or compiled
        self.cache = StaticCache(config=model.backbone.config, max_cache_len=capacity)
        # the graph's inputs: updated in place, never rebound
        self.dmask = torch.zeros(batch, 1, 1, capacity, dtype=torch.bool, device=dev)  # what a query may see
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.emb = torch.zeros(batch, 1, hidden.shape[-1], device=dev, dtype=hidden.dtype)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.decode_forward = torch.compile(self._forward, dynamic=False) if compiled else self._forward
        self.n = self.step_index = 0
        self.release: Callable[[], None] = lambda: None  # set by a pool: hand the decoder back

    def start(self, emb: torch.Tensor, mask: torch.Tensor) -> StaticDecoder:
        """Begin a request: prefill ``emb`` (B, n, H), left-padded as ``mask`` (B, n) bool says; sets
        ``logits`` (B, V) for the first token."""
        b, n = mask.shape
        dev, total = emb.device, self.capacity
        self.cache.reset()  # in place: the captured graph's buffers stay where they are
        keys = torch.zeros(b, total, dtype=torch.bool, device=dev)
        keys[:, :n] = mask
        # causal over the prefix, pads never attended; a pad query row sees itself so no row is all-masked
        # (an all-masked row turns into NaN keys/values that poison later steps)
        causal = torch.ones(n, total, dtype=torch.bool, device=dev).tril()
        m4 = keys[:, None, None, :] & causal[None, None]
        m4 |= torch.eye(n, total, dtype=torch.bool, device=dev)[None, None] & ~mask[:, None, :, None]
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        self.logits = self._forward(emb, m4, positions)
        self.dmask.copy_(keys[:, None, None, :])
        self.pos.copy_(positions[:, -1:])
        self.n, self.step_index = n, 0
        if self.wants_graph and self.graph is None:
            self._capture()
        return self

    def _forward(self, emb: torch.Tensor, mask4: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model.backbone(
            inputs_embeds=emb,
            attention_mask={"full_attention": mask4},
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        return self.model.head(out.last_hidden_state[:, -1]).float()

    def _capture(self) -> None:
        warm = 2
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(warm):  # allocator / kernel warm-up (and compilation); cache writes undone below
                self.decode_forward(self.emb, self.dmask, self.pos)
        torch.cuda.current_stream().wait_stream(s)
        for layer in self.cache.layers:
            layer.cumulative_length.sub_(warm)  # type: ignore[union-attr]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.decode_forward(self.emb, self.dmask, self.pos)

    def step(self, emb: torch.Tensor) -> torch.Tensor:
        if self.n + self.step_index >= self.capacity:
            raise RuntimeError(f"decoded past the static cache's {self.capacity} positions")
        self.dmask[:, :, :, self.n + self.step_index] = True
        self.step_index += 1
        self.pos += 1
        if self.graph is None:
            return self._forward(emb, self.dmask, self.pos)
        self.emb.copy_(emb)
        self.graph.replay()
        return self.out.clone()


class DecoderPool:
    """Static decoders kept between requests, one per (mode, batch, capacity, dtype, device), capacities
    rounded up to ``bucket`` positions so one decoder serves many lengths; the least recently used beyond
    ``size`` are dropped. A decoder is taken out while a request uses it (a concurrent request of the same
    shape gets a new one) and handed back when the request ends."""

    def __init__(self, size: int = 8, bucket: int = 256) -> None:
        self.size, self.bucket = size, bucket
        self.free: OrderedDict[tuple[Any, ...], StaticDecoder] = OrderedDict()

    def take(self, mode: str, model: Any, emb: torch.Tensor, mask: torch.Tensor, steps: int) -> StaticDecoder:
        b, n = mask.shape
        capacity = -(-(n + steps) // self.bucket) * self.bucket
        key = (mode, b, capacity, emb.dtype, emb.device)
        dec = self.free.pop(key, None)
        if dec is None:
            dec = StaticDecoder(
                model, b, capacity, emb, graph=mode == "cuda_graph", compiled=mode == "compiled"
            )
            dec.release = functools.partial(self._give_back, key, dec)
        return dec.start(emb, mask)

    def __deepcopy__(self, memo: dict[int, Any]) -> DecoderPool:
        return DecoderPool(self.size, self.bucket)  # a copied model captures its own graphs

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size, "bucket": self.bucket, "free": OrderedDict()}

    def _give_back(self, key: tuple[Any, ...], dec: StaticDecoder) -> None:
        self.free[key] = dec
        self.free.move_to_end(key)
        while len(self.free) > self.size:
            self.free.popitem(last=False)


def static_cache_supported() -> bool:
    """Earlier transformers' static caches return only the filled keys, so shapes change every step."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return (major, minor) >= (5, 24)


def make_decoder(mode: DecodeMode, model: Any, emb: torch.Tensor, mask: torch.Tensor, steps: int) -> Any:
    """A decoder for the prefix ``emb`` (B, n, H) / ``mask`` (B, n) and up to ``steps`` tokens; call its
    ``release()`` when the request ends. ``auto``: ``cuda_graph`` for a CUDA model (7x faster at 0.5B,
    batch 1, on an H100), else ``dynamic``: on a CPU the static cache gains nothing per step (within ±3 % at
    batch 1 to 16, tiny LM, 2 cores) and its prefill is slower (it attends over the whole preallocated cache
    with a 4-D mask). ``compiled`` is faster still on a GPU (1.75x ``cuda_graph``) but compiles once per
    shape and may round differently, so it is chosen by name only. Static decoders come from the model's
    :class:`DecoderPool`."""
    if mode == "auto":
        mode = "cuda_graph" if emb.is_cuda and static_cache_supported() else "dynamic"
    if mode == "dynamic":
        return DynamicDecoder(model, emb, mask, steps)
    if mode in ("static", "cuda_graph", "compiled"):
        return model.decoders.take(mode, model, emb, mask, steps)
    raise ValueError(f"unknown decode mode {mode!r}; choose dynamic, static, cuda_graph or compiled")
