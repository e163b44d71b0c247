"""mmspeech benchmarks: one command, one short table per stage.

    uv run --no-sync python benchmarks/run.py                 # CPU, small sizes (a few minutes)
    uv run --no-sync python benchmarks/run.py --device cuda --full   # 0.5B LM, full-size flow/VAE/tokenizer

Weights are random (none can be downloaded): speed figures are real, quality metrics of the VAE are only
meaningful with ``--vae-model`` pointing at a trained VAE folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
import warnings
from collections.abc import Callable

import torch

warnings.filterwarnings("ignore")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def lm_dtype(device: str, name: str | None = None) -> torch.dtype:
    """The LM's weights: ``name`` (``bfloat16`` / ``float32``), else bf16 on a GPU and float32 elsewhere."""
    return getattr(torch, name or ("bfloat16" if device.startswith("cuda") else "float32"))


def timeit(fn: Callable[[], object], device: str, repeat: int = 3) -> float:
    fn()  # warm-up (CUDA kernels, allocator)
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for k, r in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def bench_llm(
    device: str, full: bool, steps: int, only_modes: list[str] | None = None, dtype_name: str | None = None
) -> None:
    from mmspeech_core import SpeakerEmbedding
    from mmspeech_llm.config import SamplingConfig, small_config, tiny_config
    from mmspeech_llm.model import SpeechLM

    rows = []
    # --full: the 0.5B LM alone (the tiny one is launch-bound on a GPU and says little)
    configs = [("0.5B", small_config(text_vocab=151_936))] if full else [("tiny", tiny_config())]
    # bf16 on a GPU by default; float32 there asks whether `compiled` keeps the tokens where rounding is finer
    dtype = lm_dtype(device, dtype_name)
    for name, cfg in configs:
        m = SpeechLM(cfg).to(device, dtype).eval()
        # fixed length: no EOS, exactly `steps` tokens per row
        sampling = SamplingConfig(min_len_ratio=steps / 8, max_len_ratio=steps / 8)
        # greedy too: random weights give flat distributions, where a last-bit rounding difference between
        # kernels changes a sampled token; the argmax shows whether the modes compute the same logits
        greedy = dataclasses.replace(sampling, temperature=0.0)
        modes = ["dynamic", "static"] + (["cuda_graph", "compiled"] if device.startswith("cuda") else [])
        modes = [x for x in modes if only_modes is None or x in only_modes]
        for b in (1, 8):
            texts = [torch.randint(0, cfg.model.text_vocab, (8,)) for _ in range(b)]
            spk = SpeakerEmbedding(torch.randn(b, cfg.model.spk_dim, device=device, dtype=dtype))
            first = first_greedy = None
            for mode in modes:
                run = functools.partial(m.generate, texts, spk, sampling=sampling, seed=0, decode=mode)
                t = timeit(run, device, repeat=2)
                out = run().tokens
                top = m.generate(texts, spk, sampling=greedy, seed=0, decode=mode).tokens
                first = out if first is None else first
                first_greedy = top if first_greedy is None else first_greedy
                same = float((out == first).float().mean())  # the same seed: tokens equal to the first mode's
                same_greedy = float((top == first_greedy).float().mean())
                speed = [t, b * steps / t, b * steps / t / cfg.model.token_rate]
                rows.append([name, b, mode, steps, *speed, same, same_greedy])
                print(rows[-1], flush=True)  # a run cut short (a slow compile) still shows the rows done
        del m
    table(
        f"LLM decode (KV cache, repetition-aware sampling, {str(dtype).removeprefix('torch.')})",
        [
            "config",
            "batch",
            "decode",
            "tokens/row",
            "seconds",
            "tokens/s",
            "x real time",
            "same tokens",
            "same greedy",
        ],
        rows,
    )


def bench_flow(device: str, full: bool, seconds: float) -> None:
    from mmspeech_core import SpeakerEmbedding, SpeechTokens
    from mmspeech_flow.config import FlowConfig, FlowInferConfig, tiny_config
    from mmspeech_flow.model import FlowModel

    cfg = (
        FlowConfig()
        if full
        else tiny_config(dim=256, heads=4, estimator_layers=6, encoder_layers=3, encoder_post_layers=2)
    )
    m = FlowModel(cfg).to(device).eval()
    n = int(seconds * cfg.model.token_rate)
    toks = SpeechTokens.from_list([torch.randint(0, cfg.model.vocab_size, (n,))])
    spk = SpeakerEmbedding(torch.randn(1, cfg.model.spk_dim, device=device))
    rows = []
    for solver, steps in [("euler", 10), ("midpoint", 5), ("rk4", 3), ("euler", 32), ("dopri5", 0)]:
        inf = FlowInferConfig(solver=solver, steps=max(steps, 1), rtol=1e-3, atol=1e-3)  # type: ignore[arg-type]
        calls: list[int] = []
        hook = m.estimator.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        m.generate(toks, spk, infer=inf, seed=0)
        hook.remove()
        t = timeit(lambda inf=inf: m.generate(toks, spk, infer=inf, seed=0), device, repeat=2)
        rows.append([solver, steps or "adaptive", len(calls), t, t / seconds])
    params = sum(p.numel() for p in m.parameters()) / 1e6
    table(
        f"Flow ({params:.1f} M params, {seconds:.0f} s of audio, CFG in one batched call)",
        ["solver", "steps", "estimator calls", "seconds", "RTF"],
        rows,
    )


def bench_vae(device: str, full: bool, vae_model: str | None) -> None:
    from mmspeech_core import Waveform
    from mmspeech_core.audio import read_audio
    from mmspeech_tokenizer.infer import sample_wavs
    from mmspeech_vae.config import VAEConfig, tiny_config
    from mmspeech_vae.model import DACVAE

    m = (
        DACVAE.from_pretrained(vae_model, device)
        if vae_model
        else DACVAE(VAEConfig() if full else tiny_config()).to(device)
    )
    m.eval()
    clips = [read_audio(p, m.sample_rate) for p in sample_wavs()]
    wav = Waveform.from_list(clips, m.sample_rate)
    dur = float(wav.durations().sum())
    t_enc = timeit(lambda: m.encode(wav), device)
    lat = m.encode(wav)
    t_dec = timeit(lambda: m.decode(lat), device)
    rec = m.decode(lat)
    rows = [["encode", t_enc, t_enc / dur], ["decode", t_dec, t_dec / dur]]
    table(
        f"VAE speed ({'trained' if vae_model else 'random'} weights, {dur:.1f} s of speech)",
        ["step", "seconds", "RTF"],
        rows,
    )

    from audiotools import AudioSignal
    from dac.nn.loss import MelSpectrogramLoss, SISDRLoss

    metrics = []
    for x, y in zip(clips, rec.unbatch()):
        y = y[: len(x)].cpu()
        a, b = AudioSignal(y[None, None], m.sample_rate), AudioSignal(x[None, None], m.sample_rate)
        row = [float(MelSpectrogramLoss()(a, b)), -float(SISDRLoss()(a, b))]
        try:
            from torch_stoi import NegSTOILoss

            row.append(-float(NegSTOILoss(sample_rate=m.sample_rate)(y[None], x[None])))
        except Exception:
            row.append(float("nan"))
        metrics.append(row)
    mean = [sum(r[i] for r in metrics) / len(metrics) for i in range(3)]
    table("VAE reconstruction (2 real clips)", ["mel distance", "SI-SDR dB", "STOI"], [mean])


def bench_tokenizer(device: str, full: bool) -> None:
    from mmspeech_core import Waveform
    from mmspeech_core.audio import read_audio
    from mmspeech_tokenizer.config import S3Config
    from mmspeech_tokenizer.infer import sample_wavs
    from mmspeech_tokenizer.s3 import S3SpeechTokenizer

    cfg = S3Config() if full else S3Config(n_audio_state=256, n_audio_head=4, n_audio_layer=2)
    tok = S3SpeechTokenizer.random_init(cfg).to(device)
    clips = [read_audio(p, 16000) for p in sample_wavs()]
    rows = []
    for b in (1, 8):
        wav = Waveform.from_list([clips[i % 2] for i in range(b)], 16000)
        t = timeit(lambda wav=wav: tok.encode(wav), device)
        rows.append([b, t, t / float(wav.durations().sum())])
    table(
        f"S3Tokenizer v2 ({'full' if full else 'reduced'} size, random weights)",
        ["batch", "seconds", "s per s of audio"],
        rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu / cuda")
    p.add_argument("--full", action="store_true", help="production sizes (0.5B LM etc.); slow on CPU")
    p.add_argument("--only", nargs="*", default=["tokenizer", "vae", "llm", "flow"], help="stages to run")
    p.add_argument("--llm-steps", type=int, default=64, help="tokens generated per row")
    p.add_argument("--llm-modes", nargs="*", default=None, help="decode modes to time (default: all)")
    p.add_argument(
        "--llm-dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="LM weights (default: bf16 on CUDA)",
    )
    p.add_argument("--flow-seconds", type=float, default=10.0, help="audio seconds per flow call")
    p.add_argument(
        "--vae-model", default=None, help="a trained VAE folder for meaningful reconstruction metrics"
    )
    a = p.parse_args()
    torch.manual_seed(0)
    print(
        f"device: {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else f'{torch.get_num_threads()} CPU threads'}), torch {torch.__version__}"
    )
    if "tokenizer" in a.only:
        bench_tokenizer(a.device, a.full)
    if "vae" in a.only:
        bench_vae(a.device, a.full, a.vae_model)
    if "llm" in a.only:
        bench_llm(a.device, a.full, a.llm_steps, a.llm_modes, a.llm_dtype)
    if "flow" in a.only:
        bench_flow(a.device, a.full, a.flow_seconds)


if __name__ == "__main__":
    main()
