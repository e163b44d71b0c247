"""The main job on a fresh CPU machine, with no downloads: synthesise an English multi-speaker corpus with
eSpeak NG (:mod:`.corpus`), train every stage on its training speakers, bundle, synthesise for a held-out
speaker, and score the evaluation ladder (:mod:`.evaluate`) on held-out sentences of held-out speakers.

Sizes (:data:`SIZES`): ``tiny`` (the default; about 11 minutes on 2 CPU cores), ``medium`` (the longer CPU
recipe: wider models, more steps and voices, 90-120 minutes on 2 CPU cores) and ``small`` (bigger models on a
larger corpus, with the VAE's GAN: hours on CPU — its GAN steps alone take 10-20 s each on 2 cores — so it is
meant for a GPU). The report (``report.md`` / ``report.json``) gives losses, timings, the ladder table and
spectrograms of every rung, so it shows where quality is lost.
The speech tokenizer here is the trainable CTC-supervised FSQ tokenizer with a small codebook (the official
S3Tokenizer weights cannot be downloaded); the recipe for real data is in the README.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from mmspeech_core import read_audio, save_audio
from mmspeech_core.data import Utterance, extract_features, load_shards
from mmspeech_core.training import TrainConfig, fast_train_config
from mmspeech_flow.config import FlowConfig
from mmspeech_flow.config import tiny_config as flow_tiny
from mmspeech_flow.data import FlowDataset
from mmspeech_flow.train import train as train_flow
from mmspeech_llm.config import BackboneConfig, LLMConfig
from mmspeech_llm.config import tiny_config as llm_tiny
from mmspeech_llm.data import LLMDataset
from mmspeech_llm.text import TextTokenizer
from mmspeech_llm.train import train as train_llm
from mmspeech_tokenizer.config import FSQTokenizerConfig, tiny_fsq_config
from mmspeech_tokenizer.model import build_vocab
from mmspeech_tokenizer.train import train as train_tok
from mmspeech_vae.config import VAEConfig
from mmspeech_vae.config import tiny_config as vae_tiny
from mmspeech_vae.infer import latent_stats
from mmspeech_vae.train import train as train_vae

from .bundle import write_bundle
from .corpus import CorpusSplit, build_corpus
from .evaluate import Judges, evaluate, ladder_table
from .tts import TTS
from .voices import resolve_sources

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class QuickstartSize:
    """Corpus size, training steps and model widths of one quickstart size."""

    speakers: int
    utterances: int
    steps: dict[str, int]  # tokenizer, vae, llm, flow
    gan_from: float  # the VAE's discriminator joins after this fraction of its steps (1.0: never)
    width: int  # hidden size of the tokenizer / LM / flow (the VAE scales with it)
    layers: int
    fsq_dims: int  # codebook of 3 ** fsq_dims speech tokens
    max_frames: int  # padded frames per batch (LM and flow)
    eval_items: int
    llm_lr: float  # peak learning rate of the LM
    llm_temperature: float = 1.0  # the LM's sampling temperature, saved with it (see _llm_config)


# Measured on 2 CPU cores (tiny): a VAE step with the discriminator costs ~16x a reconstruction-only step
# (5.1 s vs 0.32 s, dac's encoder / decoder), so tiny trains the VAE on the mel loss alone, with the
# spectral encoder / decoder (~0.12 s a step: 1500 steps in the time dac's took for 500); LM ~4 steps/s,
# flow ~4 steps/s; tokenizer ~10 steps/s with its log-mels cached. eSpeak NG makes an utterance in
# milliseconds, so the corpus is as large as helps: on the same steps, 48 voices x 24 utterances instead
# of 16 x 12 took the oracle rung (held-out speakers, 24 items) from WER 2.15 / CER 1.43 to 1.30 / 0.96,
# and 900 tokenizer steps instead of 300 to 1.05 / 0.66 (ground truth 0.55 / 0.32; its CTC head's
# held-out CER 0.52 -> 0.35).
SIZES = {
    # tiny's LM at 4e-3, not 2e-3: its 500 steps end at loss 2.44 instead of 2.58, and zero-shot on 24
    # held-out items went from WER / CER 2.02 / 1.50 to 1.12 / 0.79 (as much as 1,000 steps at 2e-3 gave)
    # Tried, not kept (48 held-out items, paired, docs/quickstart-history.md): the LM at width 128 x 3 layers
    # (zero-shot WER +0.06, twice the LM's time); the flow at 1,200 steps (oracle -0.06, zero-shot -0.04, both
    # inside the noise, +100 s: tiny's oracle rung, 1.89x the recordings' WER, is where it loses most); 243
    # speech codes instead of 81 (oracle -0.01, zero-shot -0.05, inside the noise)
    "tiny": QuickstartSize(
        48, 24, {"tokenizer": 900, "vae": 1500, "llm": 500, "flow": 600}, 1.0, 64, 2, 4, 3000, 6, 4e-3
    ),
    # medium: the longer CPU recipe. Measured on 2 CPU cores with 64 voices x 32 sentences and 2,500 / 3,000 /
    # 3,000 / 3,000 steps: ~0.2 s a tokenizer step, 0.15 VAE, 0.45 LM, 0.57 flow; oracle rung (12 items)
    # WER 0.44 against the VAE's 0.56, but the LM memorised its 1,728 utterances (teacher-forced loss 0.13
    # on them, 5.6 on held-out ones; zero-shot WER 1.9). Hence 4x the sentences (the LM sees each ~11 times,
    # not ~50; corpus and extraction cost ~3 s per 100 utterances) and fewer tokenizer and flow steps.
    # Run whole so (64 x 128): ~79 min; held-out LM loss 2.04, and lm_gap.py put most of the LM's gap on
    # unseen voices (teacher-forced 1.34 on training voices and sentences, 1.83 on held-out sentences, 2.07
    # on held-out voices). Hence 256 voices x 32 sentences (as many utterances; eSpeak has 312 voices):
    # 68 min whole, held-out LM loss 1.72, lm_gap 1.27 / 1.77 / 1.68 (a new voice now costs less than a new
    # sentence), oracle rung WER 0.41, zero-shot 0.62 at temperature 0.5 (12 items; recordings 0.51)
    # 4,500 VAE steps instead of 3,000 (run whole): on 192 items the VAE rung's WER the same (1.00x the
    # recordings'; 48 items had suggested 0.95x against 1.10x), zero-shot +0.03 WER, DNSMOS 0.25-0.31
    # lower: not kept
    # 128 sentences a voice instead of 32 (4x the utterances, the same voices and held-out split): the LM
    # alone retrained on them stopped memorising (held-out loss 1.46, as its training loss, against 1.72) and
    # its zero-shot rung on 384 held-out items fell from 1.46x to 1.35x the recordings' WER (paired -0.055,
    # -0.087 to -0.023); run whole so: 89 min (the corpus and the extractions ~18 more minutes)
    "medium": QuickstartSize(
        256,
        128,
        {"tokenizer": 2000, "vae": 3000, "llm": 3000, "flow": 2500},
        1.0,
        128,
        3,
        5,
        4000,
        12,
        3e-3,
        0.5,
    ),
    # small: 8,000 LM steps of ~60 items would be ~160 passes over 96 x 40 utterances (memorising, as medium
    # did with ~50): ~15,000 utterances, from 288 voices for the reason medium has 256 (not run whole yet)
    "small": QuickstartSize(
        288,
        54,
        {"tokenizer": 3000, "vae": 4000, "llm": 8000, "flow": 10000},
        0.7,
        192,
        4,
        6,
        8000,
        24,
        2e-3,
        0.5,
    ),
}


def _tokenizer_config(size: QuickstartSize, vocab: list[str]) -> FSQTokenizerConfig:
    tcfg = tiny_fsq_config(vocab)
    return dataclasses.replace(
        tcfg,
        model=dataclasses.replace(
            tcfg.model, dim=size.width, encoder_layers=size.layers, fsq_dims=size.fsq_dims, heads=4
        ),
    )


def vae_config(
    size: QuickstartSize, steps: int | None = None, gan_from: float | None = None, **train: Any
) -> VAEConfig:
    """The VAE a quickstart size trains: ``steps`` (default the size's) at a peak learning rate of 2e-3,
    the discriminator joining after ``gan_from`` of them (default the size's); ``train`` sets any other
    :class:`TrainConfig` field (see :func:`fast_train_config`). ``benchmarks/vae_gan.py`` trains it too."""
    steps = size.steps["vae"] if steps is None else steps
    gan_from = size.gan_from if gan_from is None else gan_from
    vcfg = vae_tiny()
    return dataclasses.replace(
        vcfg,
        model=dataclasses.replace(
            vcfg.model,
            latent_dim=16 if size.width > 64 else 8,
            # spectral encoder / decoder (mmspeech_vae.spectral): dac's waveform ones learn too slowly for
            # a quickstart (500 steps: mel distance 1.39, latents without formants; spectral 0.90). Two STFT
            # frames per latent frame and the phase loss, tried on medium (run whole): a better VAE rung
            # (PESQ-wb 1.60 -> 1.72, WER 0.725 -> 0.586) but worse speech from the flow on its latents
            # (zero-shot WER median 0.608 -> 0.838): not used (docs/quickstart-history.md)
            encoder="mel",
            decoder="istft",
            spectral_dim=2 * size.width,
            spectral_layers=2 * size.layers,
        ),
        loss=dataclasses.replace(vcfg.loss, disc_start_step=int(gan_from * steps)),
        train=fast_train_config(steps, 2e-3, betas=(0.8, 0.99), max_batch=8, **train),
    )


def _llm_config(size: QuickstartSize, text_vocab: int, speech_vocab: int) -> LLMConfig:
    cfg = llm_tiny(text_vocab=text_vocab, speech_vocab=speech_vocab)
    backbone = BackboneConfig(
        hidden_size=size.width,
        num_layers=size.layers,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=4 * size.width,
        max_positions=2048,
    )
    # joined prompt/target pairs: one-shot continuation in distribution (tiny, 24 held-out items, 500 steps:
    # one-shot WER 3.62 -> 1.14 and Whisper running away on 10 -> 1 items, zero-shot 1.66 -> 1.41); 0.6 for
    # medium's LM (96 items, paired): one-shot -0.04 WER, zero-shot +0.05 -- not kept
    layout = dataclasses.replace(cfg.layout, prompt_pairs=0.3)
    # medium samples at temperature 0.5, not the library's 1.0 (CosyVoice2's, for LMs that read their text
    # well): its LM's distributions are flat enough that full-temperature draws wander off the text
    # (24 held-out items over 24 voices, zero-shot WER mean / median: 1.0 -> 0.947 / 0.913, 0.7 -> 0.782 /
    # 0.652, 0.5 -> 0.653 / 0.615, 0.3 -> 0.695 / 0.608, greedy 0.690 / 0.558; top-k 5 with top-p 0.5 at 1.0:
    # 0.891 / 0.809). Tiny's undertrained LM gains nothing from it (the same 24 items: 1.0 -> 1.69 / 1.17,
    # 0.5 -> 1.64 / 1.30, greedy 2.44 / 0.905 with 4 runaways). Saved with the weights: a bundle decodes so
    # unless told otherwise (`--temperature`).
    sampling = dataclasses.replace(cfg.sampling, temperature=size.llm_temperature)
    model = dataclasses.replace(cfg.model, backbone=backbone)
    return dataclasses.replace(cfg, model=model, layout=layout, sampling=sampling)


def _flow_config(
    size: QuickstartSize, speech_vocab: int, vae_cfg: VAEConfig, stats: dict[str, Any]
) -> FlowConfig:
    latent = vae_cfg.model.latent_dim
    cfg = flow_tiny(
        vocab_size=speech_vocab,
        latent_dim=latent,
        spk_in_dim=latent,
        dim=size.width,
        estimator_layers=2 * size.layers,
        latent_mean=stats["mean"],
        latent_std=[max(s, 1e-3) for s in stats["std"]],
    )
    # stronger guidance than the library's 0.7: tiny's oracle rung (24 held-out items, tokens of the
    # recordings) went from WER / CER 1.35 / 0.74 to 0.92 / 0.55 at 1.5 (2.5: 0.92 / 0.55; 20 steps
    # instead of 10 at 1.5: 0.93 / 0.55)
    return dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, cfg_rate=1.5))


def loader_workers(device: str) -> int:
    """Data loader processes. On a GPU the quickstart's small models wait for their batches (measured on an
    H200 with none, size small: 8-12 LM / flow steps per second); on a 2-core CPU, workers would only take
    cores from the model."""
    return min(4, (os.cpu_count() or 1) // 2) if device.startswith("cuda") else 0


class _Timer:
    """Times named steps for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        log.info("quickstart: %s", name)
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t, 2)
        return result


def run_quickstart(
    out_dir: str | Path,
    size: str = "tiny",
    fast: bool = False,
    seed: int = 0,
    evaluate_items: int | None = None,
    device: str = "cpu",
    minutes: float | None = None,
    sources: Sequence[str] = ("espeak",),
) -> dict[str, Any]:
    """Run everything; returns (and writes to ``out_dir/report.json`` + ``report.md``) the report.

    ``fast`` cuts corpus and steps ~10× (a smoke test for CI): the plumbing is the same.
    ``evaluate_items``: ladder items to score (default: the size's; 0 skips the ladder).
    ``minutes``: a training budget shared by the four stages (:func:`stage_budget`: each stops at its steps
    or its share, whichever comes first; corpus, extraction and evaluation come on top).
    ``sources``: the corpus's voice sources (:func:`.voices.make_voices`), checked before anything runs."""
    sources = resolve_sources(sources)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    preset = SIZES[size]
    if fast:
        preset = dataclasses.replace(
            preset,
            speakers=4,
            utterances=3,
            steps={k: max(4, v // 20) for k, v in preset.steps.items()},
            eval_items=1,
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    timed = _Timer()
    corpus = timed(
        "corpus", build_corpus, out / "corpus", preset.speakers, preset.utterances, seed, sources=sources
    )
    losses, held_out, bundle = _train_all(corpus, preset, out, timed, device, minutes)
    tts = timed("load_bundle", TTS.from_pretrained, bundle, device=device)
    outputs, wavs = _demo(tts, corpus, out, seed, timed)
    n_eval = preset.eval_items if evaluate_items is None else evaluate_items
    ladder = None
    if n_eval:
        ladder = timed(
            "evaluate",
            evaluate,
            tts,
            out / "corpus" / "test.lst",
            out / "eval",
            Judges.load(),
            seed=seed,
            limit=n_eval,
        )
    report: dict[str, Any] = {
        "size": size,
        "fast": fast,
        "device": device,
        "minutes": minutes,
        "steps": preset.steps,
        "steps_done": {n: len(c) for n, c in losses.items()},
        "seconds": timed.seconds,
        "losses": {n: [round(v, 4) for v in c] for n, c in losses.items()},
        "loss_first_last": {
            n: [round(sum(c[:3]) / 3, 4), round(sum(c[-3:]) / 3, 4)] for n, c in losses.items()
        },
        "held_out_losses": held_out,  # stage -> [step, loss on the held-out speakers' sentences]
        "corpus": {
            "train": len(corpus.train),
            "test": len(corpus.test),
            "speakers": preset.speakers,
            "sources": list(sources),
        },
        "outputs": outputs,
        "ladder": ladder,
        "bundle": str(bundle),
    }
    target_id = corpus.test_pairs[0][1].id  # the ladder's first item is the demo's sentence: show its rungs
    for rung in ("vae", "oracle_flow"):
        if (out / "eval" / rung / f"{target_id}.wav").is_file():
            wavs[f"{rung} rung"] = out / "eval" / rung / f"{target_id}.wav"
    report["plots"] = _plot(report, wavs, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


STAGES = ("tokenizer", "vae", "llm", "flow")  # in training order


def stage_budget(total_s: float, steps: dict[str, int], stage: str, spent_s: list[float]) -> float:
    """Seconds for ``stage`` out of a training budget of ``total_s``: what the stages before it left (their
    ``spent_s``), shared with the stages after it in proportion to their steps. A stage that stops at its
    steps before its share leaves the rest to the later ones. At least one second."""
    later = STAGES[STAGES.index(stage) :]
    left = total_s - sum(spent_s)
    return max(1.0, left * steps[stage] / sum(steps[s] for s in later))


def _train_all(
    corpus: CorpusSplit, size: QuickstartSize, out: Path, timed: _Timer, device: str, minutes: float | None
) -> tuple[dict[str, list[float]], dict[str, list[list[float]]], Path]:
    """Train the four stages and the text tokenizer on the training speakers; bundle the results. Returns
    the training losses per step, the held-out losses of the LM and the flow, and the bundle."""
    steps = size.steps

    def _train_kw(stage: str) -> dict[str, Any]:
        """The stage's TrainConfig fields beside its steps and learning rate; its time budget is what the
        stages before it left (computed now, when the stage starts)."""
        budget = None
        if minutes is not None:
            spent = [timed.seconds[f"train_{s}"] for s in STAGES if f"train_{s}" in timed.seconds]
            budget = stage_budget(60 * minutes, steps, stage, spent)
        return dict(
            keep_checkpoints=1,
            time_budget_s=budget,
            num_workers=loader_workers(device),
            # where a held-out set is given (the LM and the flow), scored five times a run: a training loss
            # that falls while the held-out one rises is memorising (the report shows both)
            eval_every=max(1, steps[stage] // 5),
        )

    def _tc(stage: str, lr: float, **kw: Any) -> TrainConfig:
        return fast_train_config(steps[stage], lr, **_train_kw(stage), **kw)

    train_utts, every = corpus.train, corpus.train + corpus.test
    # every k-th held-out utterance, at most ~100 (each speaker keeps several, for references): tiny's 216
    # cost the flow ~4 s per evaluation
    held = corpus.test[:: max(1, len(corpus.test) // 100)]
    tcfg = _tokenizer_config(size, build_vocab([u.text or "" for u in every]))
    tcfg = dataclasses.replace(tcfg, train=_tc("tokenizer", 2e-3, max_frames=8000))
    tok, h = timed(
        "train_tokenizer",
        train_tok,
        tcfg,
        train_utts,
        out / "runs/tokenizer",
        device=device,
        resume=False,
        cache_features=True,  # the quickstart's corpora fit in memory (tiny: ~170 MB of log-mels)
    )
    losses = {"tokenizer": [m["loss"] for m in h]}
    timed("extract_tokens", extract_features, tok.eval(), every, out / "features/tokens", batch_size=8)

    vcfg = vae_config(size, **_train_kw("vae"))
    vae, h = timed("train_vae", train_vae, vcfg, train_utts, out / "runs/vae", device=device, resume=False)
    losses["vae_mel"] = [m["mel"] for m in h]
    timed("extract_latents", extract_features, vae.eval(), every, out / "features/latents", batch_size=8)

    text_tok = TextTokenizer.train_bpe([u.text or "" for u in train_utts], vocab_size=500, min_frequency=1)
    text_tok.save(out / "runs/text_tokenizer")
    lcfg = _llm_config(size, text_tok.vocab_size, tok.vocab_size)
    lcfg = dataclasses.replace(lcfg, train=_tc("llm", size.llm_lr, max_frames=size.max_frames))
    tokens = load_shards(out / "features/tokens")
    llm_parts = {"text_tokenizer": text_tok.fingerprint(), "tokenizer": tok.fingerprint()}
    llm_ds = LLMDataset(train_utts, tokens, text_tok, lcfg, cache_references=True)  # log-mels: ~110 MB
    llm_val = LLMDataset(held, tokens, text_tok, lcfg, cache_references=True)
    _, h = timed(
        "train_llm",
        train_llm,
        lcfg,
        llm_ds,
        out / "runs/llm",
        device,
        False,
        val_dataset=llm_val,
        trained_with=llm_parts,
    )
    losses["llm"] = [m["loss"] for m in h]
    val_losses = {"llm": _val_curve(h, "loss")}

    fcfg = _flow_config(size, tok.vocab_size, vcfg, latent_stats(out / "features/latents"))
    fcfg = dataclasses.replace(fcfg, train=_tc("flow", 2e-3, max_frames=size.max_frames))
    latents = load_shards(out / "features/latents")

    def flow_data(utts: list[Utterance]) -> FlowDataset:
        keep = {u.id for u in utts}
        ids = sorted(keep & set(tokens) & set(latents))
        return FlowDataset(tokens, latents, fcfg.model.ratio, {u.id: u.speaker for u in utts}, ids=ids)

    flow_parts = {"tokenizer": tok.fingerprint(), "vae": vae.fingerprint()}
    _, h = timed(
        "train_flow",
        train_flow,
        fcfg,
        flow_data(train_utts),
        out / "runs/flow",
        device,
        False,
        val_dataset=flow_data(held),
        trained_with=flow_parts,
    )
    losses["flow"] = [m["fm"] for m in h]
    val_losses["flow"] = _val_curve(h, "fm")

    def last(run: str) -> Path:
        return out / "runs" / run / (out / "runs" / run / "latest").read_text().strip()

    bundle = write_bundle(
        out / "bundle",
        overwrite=True,  # the quickstart's own output folder
        tokenizer=last("tokenizer"),
        text_tokenizer=out / "runs/text_tokenizer",
        llm=last("llm"),
        flow=last("flow"),
        vae=last("vae"),
    )
    return losses, val_losses, bundle


def _val_curve(history: list[dict[str, float]], metric: str) -> list[list[float]]:
    """[step, held-out loss] at the steps that validated."""
    return [[i + 1, round(m[f"val/{metric}"], 4)] for i, m in enumerate(history) if f"val/{metric}" in m]


def _demo(
    tts: TTS, corpus: CorpusSplit, out: Path, seed: int, timed: _Timer
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Zero-shot, one-shot and streamed speech of a held-out sentence in a held-out speaker's voice."""
    prompt, target = corpus.test_pairs[0]
    text = target.text or ""
    zero = timed("synthesize_zero_shot", tts.synthesize, text, reference=prompt.audio, seed=seed)
    save_audio(out / "zero_shot.wav", zero)
    one = timed(
        "synthesize_one_shot",
        tts.synthesize,
        text,
        reference=prompt.audio,
        reference_text=prompt.text,
        seed=seed,
    )
    save_audio(out / "one_shot.wav", one)
    voice = tts.make_voice(prompt.audio)
    voice.save(out / "voices" / f"{prompt.speaker}.safetensors")
    t = time.perf_counter()
    chunks = list(tts.stream(text, voice, seed=seed))
    timed.seconds["stream"] = round(time.perf_counter() - t, 2)
    save_audio(out / "streamed.wav", torch.cat([c.audio for c in chunks]), tts.sample_rate)
    outputs = {
        "text": text,
        "speaker": prompt.speaker,
        "zero_shot_s": round(float(zero.durations()[0]), 2),
        "one_shot_s": round(float(one.durations()[0]), 2),
        "stream_chunks": len(chunks),
        "stream_first_chunk_latency_s": round(chunks[0].elapsed_s, 3),
    }
    wavs = {
        "prompt (held-out speaker)": Path(prompt.audio),
        "recording of the text": Path(target.audio),
        "zero-shot": out / "zero_shot.wav",
        "one-shot": out / "one_shot.wav",
        "streamed": out / "streamed.wav",
    }
    return outputs, wavs


def _plot(report: dict[str, Any], wavs: dict[str, Path], out: Path) -> list[str]:
    import matplotlib  # heavy and only for the report's pictures: imported when they are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["losses"]), figsize=(4 * len(report["losses"]), 3))
    for ax, (name, curve) in zip(axes, report["losses"].items()):
        ax.plot(range(1, len(curve) + 1), curve, label="training")
        if held := report["held_out_losses"].get(name):
            ax.plot(*zip(*held), "o-", label="held-out")
            ax.legend()
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out / "losses.png")
    fig, axes = plt.subplots(len(wavs), 1, figsize=(8, 2.2 * len(wavs)), squeeze=False)
    for ax, (name, path) in zip(axes[:, 0], wavs.items()):
        x = read_audio(path, 24000)
        spec = torch.stft(x, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()
        ax.imshow(spec.clamp_min(1e-5).log().numpy(), origin="lower", aspect="auto")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out / "spectrograms.png")
    plt.close("all")
    return ["losses.png", "spectrograms.png"]


def _source_names(corpus: dict[str, Any]) -> str:
    names = {"espeak": "eSpeak NG", "flite": "Flite"}
    return " and ".join(names[s] for s in corpus.get("sources", ["espeak"]))


def _markdown(report: dict[str, Any]) -> str:
    t = report["seconds"]
    lines = [
        "# mmspeech quickstart report",
        "",
        f"Size `{report['size']}`{' (fast smoke test)' if report['fast'] else ''}: a corpus of "
        f"{report['corpus']['speakers']} {_source_names(report['corpus'])} voices "
        f"({report['corpus']['train']} training utterances), every stage "
        f"trained on CPU in {sum(t.values()) / 60:.1f} min.",
        "",
        "| stage | first loss | last loss | held-out loss | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, (first, last) in report["loss_first_last"].items():
        held = report["held_out_losses"].get(name)
        lines.append(
            f"| {name} | {first} | {last} | {held[-1][1] if held else ''} | {t.get('train_' + name.split('_')[0], '')} |"
        )
    o = report["outputs"]
    lines += [
        "",
        f'Held-out speaker {o["speaker"]}, held-out sentence: "{o["text"]}" -> zero_shot.wav ({o["zero_shot_s"]} s), '
        f"one_shot.wav, streamed.wav ({o['stream_chunks']} chunks, first after {o['stream_first_chunk_latency_s']} s).",
        "",
    ]
    if report["ladder"] is not None:
        lines += [
            "## Evaluation ladder (held-out speakers, held-out sentences)",
            "",
            ladder_table(report["ladder"]),
            "",
            "Read each rung against `ground_truth`: the judges' own error on eSpeak speech is not zero.",
            "",
        ]
    lines += ["![losses](losses.png)", "", "![spectrograms](spectrograms.png)", ""]
    return "\n".join(lines)
