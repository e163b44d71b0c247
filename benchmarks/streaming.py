"""Streaming cost per chunk along a long utterance: the cached flow stream against re-running the flow.

    uv run --no-sync python benchmarks/streaming.py                  # 60 s, base flow, CPU
    uv run --no-sync python benchmarks/streaming.py --device cuda
    uv run --no-sync python benchmarks/streaming.py --left-chunks 4 --rerun-every 0   # bounded attention

Random weights (speed is real). Feeds the speech tokens of a ``--seconds`` utterance chunk by chunk
(``chunk_size`` tokens = 1 s at 25 Hz) and times each chunk: ``FlowStream.advance`` (only the new chunk,
attending to cached keys/values) and, for comparison, what streaming did before: ``generate(chunked=True)``
over every token so far, keeping the new frames. Then the VAE decode of each chunk's frames with the
decoder's context on both sides. Prints per-chunk times at a few positions, first-chunk latency, and the
real-time factor of streaming against one offline call.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import _sync, table  # noqa: E402


def main() -> None:
    from mmspeech_core import Latents, SpeakerEmbedding, SpeechTokens
    from mmspeech_flow.config import FlowConfig, FlowInferConfig
    from mmspeech_flow.model import FlowModel
    from mmspeech_vae.config import VAEConfig
    from mmspeech_vae.model import DACVAE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10, help="euler steps")
    p.add_argument(
        "--rerun-every", type=int, default=10, help="time the old re-run at every k-th chunk (0: never)"
    )
    p.add_argument(
        "--left-chunks",
        type=int,
        default=0,
        help="chunks attend this many earlier ones (0: all; a model setting)",
    )
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = FlowConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, left_chunks=a.left_chunks))
    flow = FlowModel(cfg).to(a.device).eval()
    vae = DACVAE(VAEConfig()).to(a.device).eval()
    c = flow.config.model
    infer = FlowInferConfig(steps=a.steps, solver="euler", cfg_rate=0.7)
    n = int(a.seconds * c.token_rate)
    tokens = torch.randint(0, c.vocab_size, (n,))
    spk = SpeakerEmbedding(torch.randn(1, c.spk_dim, device=a.device))
    ctx, chunk = vae.decoder_context, c.chunk_size

    def timed(fn):  # type: ignore[no-untyped-def]
        _sync(a.device)
        t = time.perf_counter()
        out = fn()
        _sync(a.device)
        return out, time.perf_counter() - t

    with torch.inference_mode():
        stream = flow.stream(spk, None, infer, seed=0)
        latents = torch.zeros(c.latent_dim, 0, device=a.device)
        emitted, rows, flow_times, vae_times, rerun = 0, [], [], [], {}
        t_start = time.perf_counter()
        first_audio = None
        ends = list(range(chunk + c.lookahead, n, chunk)) + [n]
        for k, end in enumerate(ends):
            last = end == n
            new, dt = timed(lambda: stream.advance(tokens[:end], last))  # noqa: B023
            flow_times.append(dt)
            latents = torch.cat([latents, new], dim=-1)
            stop = latents.shape[-1] if last else max(emitted, latents.shape[-1] - ctx)
            window = latents[:, max(0, emitted - ctx) : min(latents.shape[-1], stop + ctx)]
            _, dv = timed(lambda: vae.decode(Latents.from_list([window], c.latent_rate)))  # noqa: B023
            vae_times.append(dv)
            emitted = stop
            if first_audio is None:
                first_audio = time.perf_counter() - t_start
            if a.rerun_every and (k % a.rerun_every == 1 or last):
                done = end if last else (end - c.lookahead) // chunk * chunk
                toks = SpeechTokens.from_list([tokens[:done]], c.token_rate)
                _, rerun[k] = timed(lambda: flow.generate(toks, spk, None, infer, seed=0, chunked=True))  # noqa: B023
        stream_total = time.perf_counter() - t_start - sum(rerun.values())  # the comparison is not streaming
        offline_tokens = SpeechTokens.from_list([tokens], c.token_rate)
        (lat, t_flow) = timed(lambda: flow.generate(offline_tokens, spk, None, infer, seed=0, chunked=True))
        _, t_vae = timed(lambda: vae.decode(lat))
    shown = (
        sorted(rerun) if rerun else sorted({1, len(ends) // 4, len(ends) // 2, len(ends) - 2, len(ends) - 1})
    )
    for k in shown:
        before = rerun[k] * 1000 if k in rerun else ""
        rows.append([k, f"{ends[k] / c.token_rate:.0f}", flow_times[k] * 1000, before, vae_times[k] * 1000])
    table(
        f"flow per chunk ({chunk} tokens = {chunk / c.token_rate:g} s), {a.seconds:g} s utterance, "
        f"left_chunks {a.left_chunks or 'all'}, {a.device}",
        ["chunk", "at s", "FlowStream ms", "re-run (before) ms", "VAE chunk ms"],
        rows,
    )
    second, lastc = flow_times[1], flow_times[-2]  # the final call is a partial chunk
    print(f"\nlast whole chunk / second chunk (FlowStream): {lastc / second:.2f}x")
    audio_s = n / c.token_rate
    table(
        "latency and real-time factor",
        ["mode", "first audio ms", "total s", "RTF"],
        [
            [
                "streaming (FlowStream + VAE chunks)",
                (first_audio or 0) * 1000,
                stream_total,
                stream_total / audio_s,
            ],
            [
                "offline (one flow call + one VAE call)",
                (t_flow + t_vae) * 1000,
                t_flow + t_vae,
                (t_flow + t_vae) / audio_s,
            ],
        ],
    )


if __name__ == "__main__":
    main()
