"""Where a decode step of the LM spends its time, batch by batch, and what a batch of three sentences of
different lengths costs end to end.

    uv run --no-sync python benchmarks/llm_step.py                  # tiny LM, CPU, batches 1 / 4 / 16
    uv run --no-sync python benchmarks/llm_step.py --size 0.5B --batches 1 8
    uv run --no-sync python benchmarks/llm_step.py --sampler both --preset none  # compiled vs torch sampler

The step is split by timing hooks: the backbone (transformer blocks), the speech head, sampling
(``sample_step``), and the rest of the loop (the next token's embedding, the repetition window, the end
check). The prefill is timed apart and left out of the per-step figures. Every row runs exactly
``--tokens`` steps (EOS is blocked until then). Eager decoding only: a CUDA graph replays the backbone and
head as one launch, which hooks cannot see; on a GPU each hook synchronises, so use it for the split, not
for the speed (``run.py`` times the decoders).

The second table is ``TTS.synthesize_batch`` on a random-weight bundle of ``first_audio.py``'s preset:
three sentences of different lengths as one call, against each alone.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from first_audio import make_bundle
from run import lm_dtype, sync, table, timeit

SENTENCES = [
    "Good morning.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call me back when you have a moment, and bring the blue folder with the old letters in it.",
]


class StepClock:
    """Seconds spent per part of the decode loop, from forward hooks on the backbone and head and a wrapper
    around the sampler; the first backbone and head call of a generation is its prefill."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.parts = {"prefill": 0.0, "backbone": 0.0, "head": 0.0, "sampling": 0.0}
        self.calls = {"backbone": 0, "head": 0}

    @contextlib.contextmanager
    def attached(self, model: Any) -> Iterator[None]:
        import mmspeech_llm.model as lm_module

        started: dict[str, float] = {}

        def before(name: str) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                self.sync()
                started[name] = time.perf_counter()

            return hook

        def after(name: str) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                self.sync()
                dt = time.perf_counter() - started[name]
                self.calls[name] += 1
                self.parts["prefill" if self.calls[name] == 1 else name] += dt

            return hook

        handles = []
        for name, mod in (("backbone", model.backbone), ("head", model.head)):
            handles += [mod.register_forward_pre_hook(before(name)), mod.register_forward_hook(after(name))]
        sample = lm_module.sample_step

        def timed_sample(*args: Any, **kw: Any) -> torch.Tensor:
            self.sync()
            t = time.perf_counter()
            out = sample(*args, **kw)
            self.sync()
            self.parts["sampling"] += time.perf_counter() - t
            return out

        lm_module.sample_step = timed_sample
        try:
            yield
        finally:
            lm_module.sample_step = sample
            for h in handles:
                h.remove()


def step_split(model: Any, batch: int, tokens: int, device: str, repeat: int) -> dict[str, float]:
    """Per-step milliseconds of each part (the best of ``repeat`` timed generations after a warm-up)."""
    from mmspeech_core import SpeakerEmbedding
    from mmspeech_llm.config import SamplingConfig

    cfg = model.config.model
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, cfg.text_vocab, (8,), generator=g) for _ in range(batch)]
    spk = SpeakerEmbedding(torch.randn(batch, cfg.spk_dim, generator=g).to(device, model.head.weight.dtype))
    sampling = SamplingConfig(min_len_ratio=tokens / 8, max_len_ratio=tokens / 8)  # exactly `tokens` steps
    model.generate(texts, spk, sampling=sampling, seed=0)  # warm-up
    best: dict[str, float] | None = None
    for _ in range(repeat):
        clock = StepClock(functools.partial(sync, device))
        with clock.attached(model):
            sync(device)
            t = time.perf_counter()
            out = model.generate(texts, spk, sampling=sampling, seed=0)
            sync(device)
            total = time.perf_counter() - t
        assert out.lengths.tolist() == [tokens] * batch
        loop = total - clock.parts["prefill"]
        ms = {k: 1000 * v / tokens for k, v in clock.parts.items() if k != "prefill"}
        ms["step"] = 1000 * loop / tokens
        ms["rest"] = ms["step"] - ms["backbone"] - ms["head"] - ms["sampling"]
        if best is None or ms["step"] < best["step"]:
            best = ms
    assert best is not None
    return best


@contextlib.contextmanager
def sampler(name: str) -> Iterator[None]:
    """``auto``: the library's choice (the compiled CPU sampler where numba is installed); ``torch``: torch's
    ops whatever is installed."""
    import mmspeech_llm.infer as infer

    saved = infer.cpu_kernel
    if name == "torch":
        infer.cpu_kernel = lambda: None  # type: ignore[assignment]
    try:
        yield
    finally:
        infer.cpu_kernel = saved


def bench_steps(
    size: str, device: str, batches: list[int], tokens: int, repeat: int, samplers: list[str]
) -> None:
    from mmspeech_llm.config import small_config, tiny_config
    from mmspeech_llm.model import SpeechLM

    # the tiny LM with the real FSQ vocabulary (6,561 codes + specials), as the quickstart's LMs have it
    cfg = small_config(text_vocab=151_936) if size == "0.5B" else tiny_config(speech_vocab=6561)
    model = SpeechLM(cfg).to(device, lm_dtype(device)).eval()
    rows = []
    base: dict[str, float] = {}
    for b in batches:
        best: dict[str, dict[str, float]] = {}
        for _ in range(repeat):  # the samplers take turns, so that each sees the same machine
            for name in samplers:
                with sampler(name):
                    ms = step_split(model, b, tokens, device, 1)
                if name not in best or ms["step"] < best[name]["step"]:
                    best[name] = ms
        for name, ms in best.items():
            tps = 1000 * b / ms["step"]
            base.setdefault(name, tps / b)  # tokens/s of one row alone (the first batch size, normally 1)
            parts = [ms[k] for k in ("backbone", "head", "sampling", "rest")]
            share = f"{100 * ms['sampling'] / ms['step']:.1f} %"
            rows.append([b, name, ms["step"], *parts, share, tps, tps / base[name]])
            print(rows[-1], flush=True)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    table(
        f"LM decode step ({size}, {params:.1f} M params, {device}, {tokens} tokens per row, eager dynamic cache,"
        f" best of {repeat})",
        [
            "batch",
            "sampler",
            "ms/step",
            "backbone",
            "head",
            "sampling",
            "rest",
            "sampling share",
            "tokens/s",
            "× batch 1",
        ],
        rows,
    )


def bench_batch(preset: str, device: str, repeat: int, sampler_name: str) -> None:
    from mmspeech_core import Waveform
    from mmspeech_pipeline.tts import TTS

    with tempfile.TemporaryDirectory() as tmp:
        tts = TTS.from_pretrained(make_bundle(preset, Path(tmp), tokens_per_text=3.0), device=device)
        g = torch.Generator().manual_seed(0)
        ref = Waveform.from_list([0.1 * torch.randn(3 * tts.sample_rate, generator=g)], tts.sample_rate)
        voice = tts.make_voice(ref)

        def best(texts: list[str]) -> tuple[float, float]:
            run = lambda: tts.synthesize_batch(texts, [voice] * len(texts), seed=0, progress=False)  # noqa: E731
            return timeit(run, device, repeat), float(run().durations().sum())

        rows = []
        for name, texts in [("one call, 3 sentences", SENTENCES)] + [
            (f"alone: {len(s)} chars", [s]) for s in SENTENCES
        ]:
            t, audio_s = best(texts)
            rows.append([name, audio_s, t, t / audio_s])
        alone_s, alone_audio = sum(r[2] for r in rows[1:]), sum(r[1] for r in rows[1:])
        rows.append(["the 3 alone, summed", alone_audio, alone_s, alone_s / alone_audio])
    table(
        f"TTS.synthesize_batch, {preset} preset, random weights, {device}, {sampler_name} sampler"
        f" (best of {repeat})",
        ["call", "audio s", "seconds", "RTF"],
        rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=["tiny", "0.5B"], default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--tokens", type=int, default=64, help="decode steps per row")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per row (the best is shown)")
    p.add_argument(
        "--preset", choices=["tiny", "base", "none"], default="tiny", help="synthesize_batch's bundle"
    )
    p.add_argument(
        "--sampler",
        choices=["auto", "torch", "both"],
        default="auto",
        help="auto: the compiled CPU sampler where numba is installed; torch: torch's ops; both: the two in "
        "turns, a row each",
    )
    a = p.parse_args()
    torch.manual_seed(0)
    samplers = ["auto", "torch"] if a.sampler == "both" else [a.sampler]
    bench_steps(a.size, a.device, a.batches, a.tokens, a.repeat, samplers)
    for name in samplers if a.preset != "none" else []:
        with sampler(name):
            bench_batch(a.preset, a.device, a.repeat, name)


if __name__ == "__main__":
    main()
