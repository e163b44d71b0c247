"""A stream's first call as a CUDA graph: the first chunk's latency on a GPU.

At streaming sizes the flow is launch-bound on a GPU: the base flow's first chunk (25 tokens, euler 10 +
CFG) is thousands of small kernels, each launched from Python: 125 ms eagerly on an H200, 26 ms replayed
as a graph (copies included). The first call of
every stream of one shape (rows, tokens, prompt frames, solver) does the same work on new inputs, so it
is captured once and replayed: the inputs are copied into the graph's buffers, and what the call leaves
behind (the latents, the token encoder's and the estimator's key/value caches) is copied out, because the
next replay overwrites it. Later calls attend to a past that grows and run eagerly; they only need to
keep up with real time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from mmspeech_core.nn import KVCache


@dataclass
class CallState:
    """What a stream's call leaves behind: its output and the caches the next call continues."""

    latents: torch.Tensor  # (B, C, frames)
    encoder: Any  # mmspeech_flow.model.EncoderState (which imports this module)
    estimator: list[list[KVCache]]  # per ODE evaluation, one cache per block


# (tokens (B, W), spk (B, D), prompt (B, C, P·ratio), noise (B, C, frames)) -> CallState; no host sync
FirstCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], CallState]


class CapturedCall:
    """One shape's first call: static input buffers, and the call captured on them (``capture``), or run
    eagerly on them (``capture=False``: the same buffers and copies, for testing on a CPU)."""

    def __init__(self, run: FirstCall, inputs: tuple[torch.Tensor, ...], capture: bool) -> None:
        self.run = run
        self.inputs = tuple(x.clone() for x in inputs)  # updated in place, never rebound
        self.graph: torch.cuda.CUDAGraph | None = None
        self.state: CallState | None = None
        if capture:
            self._capture()

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: kernels chosen, tables cached, workspaces allocated
            for _ in range(2):
                self.run(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.state = self.run(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> CallState:
        for buf, x in zip(self.inputs, inputs):
            buf.copy_(x)
        if self.graph is None:
            self.state = self.run(*self.inputs)
        else:
            self.graph.replay()
        assert self.state is not None
        return _copy_state(self.state)


def _copy_state(s: CallState) -> CallState:
    """A stream's own copy of what a call left in the graph's memory."""
    return CallState(s.latents.clone(), s.encoder.clone(), [[kv.clone() for kv in ev] for ev in s.estimator])


class StreamGraphs:
    """Captured first calls kept on a flow model, one per shape, the least recently used beyond ``size``
    dropped. A shape is captured at its second request: a capture costs about three eager calls (two
    warm-ups and the capture), which a shape seen once (a one-shot prompt's length, say) would never earn
    back. ``on_cpu``: run a CPU model's first calls through the same buffers and copies, uncaptured (tests
    the plumbing where no GPU is)."""

    def __init__(self, size: int = 8, on_cpu: bool = False) -> None:
        self.size, self.on_cpu = size, on_cpu
        self.calls: OrderedDict[Hashable, CapturedCall] = OrderedDict()
        self.seen: OrderedDict[Hashable, None] = OrderedDict()  # shapes run once, eagerly

    def applies(self, device: torch.device) -> bool:
        return device.type == "cuda" or self.on_cpu

    def run(self, key: Hashable, run: FirstCall, *inputs: torch.Tensor) -> CallState:
        """The first call for ``key`` (a shape) on ``inputs``: eager at the first request of the shape,
        captured at the second, replayed after."""
        call = self.calls.pop(key, None)
        if call is None:
            if _remember(self.seen, key, 8 * self.size):
                return run(*inputs)
            call = CapturedCall(run, inputs, capture=inputs[0].is_cuda)
        self.calls[key] = call
        while len(self.calls) > self.size:
            self.calls.popitem(last=False)
        return call(*inputs)

    def __deepcopy__(self, memo: dict[int, Any]) -> StreamGraphs:
        return StreamGraphs(self.size, self.on_cpu)  # a copied model captures its own

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size, "on_cpu": self.on_cpu, "calls": OrderedDict(), "seen": OrderedDict()}


def _remember(seen: OrderedDict[Hashable, None], key: Hashable, size: int) -> bool:
    """Whether ``key`` is new to ``seen`` (then it is added; the oldest beyond ``size`` are forgotten)."""
    new = key not in seen
    seen[key] = None
    seen.move_to_end(key)
    while len(seen) > size:
        seen.popitem(last=False)
    return new
