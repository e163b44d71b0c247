"""The main job on a fresh CPU machine, with no downloads: build a small multi-speaker corpus from the two
real recordings shipped in the s3tokenizer wheel, run every stage at tiny size, synthesise, report.

What it proves: every stage trains (losses fall), extracts, checkpoints, reloads as one bundle and composes
into zero-shot and one-shot synthesis and streaming, with the real code paths. What it does not: speech
quality. The corpus is ~50 s of one Mandarin speaker made into three pseudo-speakers by pitch/tempo
shifting, the transcripts are placeholders shared across the pseudo-speakers, and every model is tiny and
trained for seconds; the output is babble with the reference's rough timbre, not intelligible speech.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from mmspeech_core import read_audio, save_audio
from mmspeech_core.audio import resample
from mmspeech_core.data import Utterance, extract_features, load_shards, write_manifest
from mmspeech_core.training import TrainConfig, fast_train_config
from mmspeech_flow.config import tiny_config as flow_tiny
from mmspeech_flow.data import FlowDataset
from mmspeech_flow.train import train as train_flow
from mmspeech_llm.config import tiny_config as llm_tiny
from mmspeech_llm.data import LLMDataset
from mmspeech_llm.text import TextTokenizer
from mmspeech_llm.train import train as train_llm
from mmspeech_tokenizer.config import tiny_fsq_config
from mmspeech_tokenizer.infer import sample_wavs
from mmspeech_tokenizer.model import build_vocab
from mmspeech_tokenizer.train import train as train_tok
from mmspeech_vae.config import tiny_config as vae_tiny
from mmspeech_vae.infer import latent_stats
from mmspeech_vae.train import train as train_vae

from .bundle import write_bundle
from .tts import TTS

log = logging.getLogger(__name__)

# placeholder transcripts: segment k of a source recording says "text k" for every pseudo-speaker
PLACEHOLDER_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a small voice model learns from very little data",
    "speech tokens turn into latents and then into sound",
    "every stage of the pipeline runs on the processor",
]
SPEAKERS = {"spk_a": 1.0, "spk_b": 0.84, "spk_c": 1.19}  # resampling factors (pitch and tempo shift)


def build_corpus(out: Path, sample_rate: int = 24000) -> list[Utterance]:
    """3 pseudo-speakers × 2 recordings × 2 halves = 12 utterances with speaker labels and placeholder text."""
    out.mkdir(parents=True, exist_ok=True)
    utts = []
    for spk, f in SPEAKERS.items():
        for r, wav in enumerate(sample_wavs()):
            x = read_audio(wav, sample_rate)
            x = resample(x, sample_rate, int(sample_rate * f))  # played back at sample_rate: shifted by 1/f
            x = 0.9 * x / x.abs().max()
            half = len(x) // 2
            for h, seg in enumerate((x[:half], x[half:])):
                uid = f"{spk}_{r}{h}"
                save_audio(out / f"{uid}.wav", seg, sample_rate)
                utts.append(Utterance(uid, str(out / f"{uid}.wav"), PLACEHOLDER_TEXTS[2 * r + h], spk))
    write_manifest(out / "manifest.jsonl", utts)
    return utts


def _tc(steps: int, lr: float, **kw: Any) -> TrainConfig:
    return fast_train_config(steps, lr, keep_checkpoints=1, **kw)


def _plot(report: dict[str, Any], wavs: dict[str, Path], out: Path) -> list[str]:
    import matplotlib  # heavy and only for the report's pictures: imported when they are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, len(report["losses"]), figsize=(4 * len(report["losses"]), 3))
    for ax, (name, curve) in zip(axes, report["losses"].items()):
        ax.plot(curve)
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out / "losses.png")
    files.append("losses.png")
    fig, axes = plt.subplots(len(wavs), 1, figsize=(8, 2.5 * len(wavs)), squeeze=False)
    for ax, (name, p) in zip(axes[:, 0], wavs.items()):
        x = read_audio(p)
        spec = (
            torch.stft(x, 1024, 256, window=torch.hann_window(1024), return_complex=True)
            .abs()
            .clamp_min(1e-5)
            .log()
        )
        ax.imshow(spec.numpy(), origin="lower", aspect="auto")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out / "spectrograms.png")
    files.append("spectrograms.png")
    plt.close("all")
    return files


def run_quickstart(out_dir: str | Path, fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run everything; returns (and writes to ``out_dir/report.json`` + ``report.md``) the report.

    ``fast`` cuts the step counts ~10× (for tests): the plumbing is the same.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    k = 0.1 if fast else 1.0
    steps = {
        name: max(4, int(n * k)) for name, n in {"tokenizer": 150, "vae": 60, "llm": 300, "flow": 400}.items()
    }
    times: dict[str, float] = {}
    losses: dict[str, list[float]] = {}

    def timed(name: str, fn: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        log.info("quickstart: %s", name)
        r = fn(*a, **kw)
        times[name] = round(time.perf_counter() - t, 2)
        return r

    utts = timed("corpus", build_corpus, out / "corpus")
    train_utts = [u for u in utts if u.speaker != "spk_c" or u.id.endswith("00")]  # most of spk_c is held out
    held_out = [u for u in utts if u not in train_utts]

    # stage 0: a CTC-supervised FSQ tokenizer trained here (no official weights can be downloaded)
    tcfg = tiny_fsq_config(build_vocab([u.text or "" for u in utts]))
    tcfg = dataclasses.replace(tcfg, train=_tc(steps["tokenizer"], 2e-3, max_frames=4000))
    tok, h = timed(
        "train_tokenizer", train_tok, tcfg, train_utts, out / "runs/tokenizer", device="cpu", resume=False
    )
    losses["tokenizer"] = [m["loss"] for m in h]
    timed("extract_tokens", extract_features, tok.eval(), utts, out / "features/tokens", batch_size=4)

    vcfg = vae_tiny()
    vcfg = dataclasses.replace(
        vcfg,
        loss=dataclasses.replace(vcfg.loss, disc_start_step=steps["vae"] // 2),
        train=_tc(steps["vae"], 2e-3, betas=(0.8, 0.99), max_batch=4),
    )
    vae, h = timed("train_vae", train_vae, vcfg, train_utts, out / "runs/vae", device="cpu", resume=False)
    losses["vae_mel"] = [m["mel"] for m in h]
    timed("extract_latents", extract_features, vae.eval(), utts, out / "features/latents", batch_size=4)

    text_tok = TextTokenizer.train_bpe([u.text or "" for u in utts], vocab_size=400, min_frequency=1)
    text_tok.save(out / "runs/text_tokenizer")
    lcfg = llm_tiny(text_vocab=text_tok.vocab_size, speech_vocab=tok.vocab_size)
    lcfg = dataclasses.replace(lcfg, train=_tc(steps["llm"], 2e-3, max_frames=4000))
    tokens = load_shards(out / "features/tokens")
    llm_ds = LLMDataset(train_utts, tokens, text_tok, lcfg)
    llm_parts = {"text_tokenizer": text_tok.fingerprint(), "tokenizer": tok.fingerprint()}
    llm, h = timed(
        "train_llm", train_llm, lcfg, llm_ds, out / "runs/llm", "cpu", False, trained_with=llm_parts
    )
    losses["llm"] = [m["loss"] for m in h]

    stats = latent_stats(out / "features/latents")
    fcfg = flow_tiny(
        vocab_size=tok.vocab_size,
        latent_dim=vcfg.model.latent_dim,
        spk_in_dim=vcfg.model.latent_dim,
        latent_mean=stats["mean"],
        latent_std=[max(s, 1e-3) for s in stats["std"]],
    )
    fcfg = dataclasses.replace(fcfg, train=_tc(steps["flow"], 2e-3, max_frames=4000))
    latents = load_shards(out / "features/latents")
    keep = {u.id for u in train_utts}
    flow_ds = FlowDataset(
        {i: t for i, t in tokens.items() if i in keep},
        {i: v for i, v in latents.items() if i in keep},
        fcfg.model.ratio,
        {u.id: u.speaker for u in train_utts},
    )
    flow_parts = {"tokenizer": tok.fingerprint(), "vae": vae.fingerprint()}
    flow, h = timed(
        "train_flow", train_flow, fcfg, flow_ds, out / "runs/flow", "cpu", False, trained_with=flow_parts
    )
    losses["flow"] = [m["fm"] for m in h]

    def last_ckpt(run: str) -> Path:
        return out / "runs" / run / (out / "runs" / run / "latest").read_text().strip()

    bundle = write_bundle(
        out / "bundle",
        overwrite=True,  # the quickstart's own output folder
        tokenizer=last_ckpt("tokenizer"),
        text_tokenizer=out / "runs/text_tokenizer",
        llm=last_ckpt("llm"),
        flow=last_ckpt("flow"),
        vae=last_ckpt("vae"),
    )
    tts = timed("load_bundle", TTS.from_pretrained, bundle, device="cpu")

    ref = held_out[0]  # an utterance of spk_c no stage trained on
    text = "a small voice model learns from very little data. every stage runs on the processor."
    wavs: dict[str, Path] = {}
    zero = timed("synthesize_zero_shot", tts.synthesize, text, reference=ref.audio, seed=seed)
    save_audio(out / "zero_shot.wav", zero)
    wavs["zero-shot"] = out / "zero_shot.wav"
    one = timed(
        "synthesize_one_shot", tts.synthesize, text, reference=ref.audio, reference_text=ref.text, seed=seed
    )
    save_audio(out / "one_shot.wav", one)
    wavs["one-shot"] = out / "one_shot.wav"
    voice = tts.make_voice(ref.audio)
    voice.save(out / "voice_spk_c.safetensors")
    t = time.perf_counter()
    chunks = list(tts.stream(text, voice, seed=seed))
    times["stream"] = round(time.perf_counter() - t, 2)
    save_audio(out / "streamed.wav", torch.cat([c.audio for c in chunks]), tts.sample_rate)
    wavs["streamed"] = out / "streamed.wav"
    wavs["reference"] = Path(ref.audio)

    report: dict[str, Any] = {
        "steps": steps,
        "seconds": times,
        "losses": {n: [round(v, 4) for v in c] for n, c in losses.items()},
        "loss_first_last": {
            n: [round(sum(c[:3]) / 3, 4), round(sum(c[-3:]) / 3, 4)] for n, c in losses.items()
        },
        "corpus": {"utterances": len(utts), "train": len(train_utts), "speakers": list(SPEAKERS)},
        "outputs": {
            "zero_shot_s": round(float(zero.durations()[0]), 2),
            "one_shot_s": round(float(one.durations()[0]), 2),
            "stream_chunks": len(chunks),
            "stream_first_chunk_latency_s": round(chunks[0].elapsed_s, 3),
            "sample_rate": tts.sample_rate,
        },
        "bundle": str(bundle),
    }
    report["plots"] = _plot(report, wavs, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# mmspeech quickstart report",
        "",
        "Tiny models, CPU, placeholder transcripts: this proves the plumbing, not quality.",
        "",
        "| stage | first loss | last loss | seconds |",
        "|---|---|---|---|",
    ]
    for n, (a, b) in report["loss_first_last"].items():
        stage = n.split("_")[0]
        lines.append(f"| {n} | {a} | {b} | {times.get('train_' + stage, '')} |")
    lines += [
        "",
        f"Outputs: zero_shot.wav ({report['outputs']['zero_shot_s']} s), one_shot.wav, streamed.wav "
        f"({len(chunks)} chunks, first after {report['outputs']['stream_first_chunk_latency_s']} s).",
        "",
        "![losses](losses.png)",
        "",
        "![spectrograms](spectrograms.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return report
