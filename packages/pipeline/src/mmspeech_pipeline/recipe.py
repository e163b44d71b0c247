"""The quickstart's recipe: its sizes (:data:`SIZES`), the config each size trains, and its four trainings
as jobs that run one after another or two side by side.

Each training is a job that reads what it needs from the quickstart's folder and writes what it makes there:

    tokenizer  the FSQ speech tokenizer, the tokens of the training and scored held-out utterances, the BPE
               text tokenizer
    vae        the VAE, those utterances' latents
    llm        the LM (needs the tokenizer job's tokens and text tokenizer)
    flow       the flow (needs the tokens and the latents)

``train_all(..., jobs=2)`` runs the tokenizer and VAE jobs side by side, then the LM as soon as the tokens
exist and the flow as soon as the latents do, each job in its own process with half the cores. On 2 CPU
cores a width-128 model's step gains only 1.2-1.5x from its second thread, so two jobs on one core each
finish the four trainings sooner than one job on both at a time (measured on medium's corpus, s a step
alone on 2 threads / side by side on 1 each: tokenizer 0.77 / 0.62 while the VAE trained, VAE 0.29 / 0.32,
LM 0.66 / 0.98 while the flow trained, flow 0.65 / 1.19). Every job is deterministic on its own (its seeds
come from its config), so on the same number of threads the schedule does not change what it trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from mmspeech_core.checkpoint import atomic_write_text
from mmspeech_core.data import Utterance, extract_features, load_shards, read_manifest
from mmspeech_core.training import TrainConfig, fast_train_config
from mmspeech_flow.config import FlowConfig
from mmspeech_flow.config import tiny_config as flow_tiny
from mmspeech_llm.config import BackboneConfig, LLMConfig
from mmspeech_llm.config import tiny_config as llm_tiny
from mmspeech_llm.text import TextTokenizer
from mmspeech_tokenizer.config import FSQTokenizerConfig, tiny_fsq_config
from mmspeech_vae.config import VAEConfig
from mmspeech_vae.config import tiny_config as vae_tiny
from mmspeech_vae.infer import latent_stats

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


class StepTimer:
    """Times named steps for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        log.info("quickstart: %s", name)
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t, 2)
        return result


# ---- the four trainings as jobs ------------------------------------------------------------------------
STAGES = ("tokenizer", "vae", "llm", "flow")  # one after another, in this order
NEEDS: dict[str, tuple[str, ...]] = {
    "tokenizer": (),
    "vae": (),
    "llm": ("tokenizer",),
    "flow": ("tokenizer", "vae"),
}
# side by side, each pair shares one time budget (the stages of a pair run one after the other)
PAIRS = (("tokenizer", "llm"), ("vae", "flow"))


PRECISIONS = ("fp32", "bf16")
# bf16 where the hardware computes it (fp32 elsewhere: see precision_amp): medium whole in it read zero-shot
# as the fp32 runs do, in less time (docs/quickstart-history.md, twenty-second session)
DEFAULT_PRECISION = "bf16"
# the stages that train in fp32 whatever the precision: the tokenizer's bf16 tokens read worse zero-shot in
# a paired comparison (one training each: docs/quickstart-history.md, twenty-first session), and its lane
# only grows by ~2-5 minutes of medium's hour (the VAE's, beside it, is the shorter one)
FP32_STAGES = ("tokenizer",)


def precision_amp(precision: str, stage: str) -> str:
    """``stage``'s :attr:`TrainConfig.amp` for ``precision``: "fp32" ("none"), or "bf16": autocast, the
    forward's matrix products in bf16 and weights, gradients and optimiser state in fp32, on a GPU or CPU that
    computes bf16 natively (:func:`mmspeech_core.training.cuda_has_bf16`, ``cpu_has_bf16``; fp32 on others,
    where it would be emulated) — for every stage but those in :data:`FP32_STAGES`. Medium's steps on one
    core, fp32 / bf16 (s, best of 3, ``benchmarks/train_step.py``), on an AMX CPU: tokenizer 0.176 / 0.117,
    VAE 0.092 / 0.085, LM 0.44 / 0.32, flow 1.11 / 0.82; on an AVX512-BF16 AMD EPYC: 0.203 / 0.142, 0.099 /
    0.078, 0.55 / 0.37, 1.31 / 0.99. Medium with every stage in bf16 read 1.50x the recordings' WER zero-shot
    on 96 items; with its tokenizer retrained in fp32 (the LM and the flow again in bf16, on its tokens)
    1.35x, paired WER 0.070 lower (0.000 to 0.139), against 1.37-1.42x in four fp32 runs — one training of
    each, and at another seed an fp32 and a bf16 tokenizer gave alike tokens (6.97 bits each), so fp32 for the
    tokenizer is the cautious side, not a proven need (as the tokenizer's own config's default); its LM
    retrained in fp32 on the bf16 tokens, paired, changed WER by +0.020 (-0.047 to +0.090). This split run
    whole from a fresh clone (54 min on the EPYC) read 1.40x (1.24-1.60) on the same 96 items, hence the
    quickstart's default (docs/quickstart-history.md, twentieth to twenty-second sessions)."""
    return "bf16" if check_precision(precision) == "bf16" and stage not in FP32_STAGES else "none"


def check_precision(precision: str) -> str:
    """``precision``, if it is one of :data:`PRECISIONS` (else ValueError)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_jobs(jobs: int | None) -> int:
    """Trainings at a time: ``jobs`` (1 or 2) or, for None, two where there are two cores or more."""
    jobs = min(2, os.cpu_count() or 1) if jobs is None else jobs
    if jobs not in (1, 2):
        raise ValueError(f"jobs must be 1 (one training at a time) or 2 (two side by side), got {jobs}")
    return jobs


def stage_budget(
    total_s: float, steps: dict[str, int], stage: str, spent_s: list[float], lane: Sequence[str] = STAGES
) -> float:
    """Seconds for ``stage`` out of a training budget of ``total_s``: what the stages before it in its
    ``lane`` left (their ``spent_s``), shared with the lane's stages after it in proportion to their steps.
    A stage that stops at its steps before its share leaves the rest to the later ones. At least one second.
    One after another the four stages are one lane; side by side each of :data:`PAIRS` is one."""
    later = lane[lane.index(stage) :]
    left = total_s - sum(spent_s)
    return max(1.0, left * steps[stage] / sum(steps[s] for s in later))


@dataclass(frozen=True)
class TrainingJob:
    """One training, as the process that runs it reads it: the stage, the quickstart's folder, the size's
    settings, the device, its time budget (None: its steps alone), torch's CPU threads (None: as set) and
    its mixed precision."""

    stage: str
    out: str
    size: QuickstartSize
    device: str
    budget_s: float | None = None
    threads: int | None = None
    amp: str = "none"  # the TrainConfig's: "bf16" or "none" (see precision_amp)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainingJob:
        d = json.loads(text)
        return cls(**{**d, "size": QuickstartSize(**d["size"])})


@dataclass
class JobResult:
    """What a training reports: its loss per step (by curve), its held-out losses ([step, loss]) and the
    seconds of its steps (``train_<stage>``, extraction)."""

    losses: dict[str, list[float]]
    held_out: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class _Job:
    """A job's view of the quickstart folder: the corpus's splits, its stage's training settings, timing."""

    def __init__(self, job: TrainingJob) -> None:
        self.job, self.out, self.size = job, Path(job.out), job.size
        self.train = read_manifest(self.out / "corpus/train.jsonl")
        self.test = read_manifest(self.out / "corpus/test.jsonl")
        self.held = scored_on(self.test)
        # the utterances whose features the trainings read: the other held-out ones' never are (medium:
        # ~5,800 of 32,768, 4.3 minutes of extraction, 2.2 of the run's); the evaluation encodes what it scores
        self.read = self.train + self.held
        self.timed = StepTimer()

    def train_fields(self) -> dict[str, Any]:
        """The stage's TrainConfig fields beside its steps and learning rate."""
        steps = self.size.steps[self.job.stage]
        return dict(
            keep_checkpoints=1,
            # a checkpoint every tenth of the steps: an interrupted quickstart loses at most that much of a
            # training (medium's LM: ~5 minutes) when it is run again (each training resumes its latest)
            save_every=max(1, steps // 10),
            time_budget_s=self.job.budget_s,
            amp=self.job.amp,
            num_workers=loader_workers(self.job.device),
            # where a held-out set is given (the LM and the flow), scored five times a run: a training loss
            # that falls while the held-out one rises is memorising (the report shows both)
            eval_every=max(1, steps // 5),
        )

    def train_config(self, lr: float, **kw: Any) -> TrainConfig:
        return fast_train_config(self.size.steps[self.job.stage], lr, **self.train_fields(), **kw)

    def last(self, run: str) -> Path:
        """The newest checkpoint of ``runs/<run>``."""
        return last_checkpoint(self.out / "runs" / run)

    def result(self, losses: dict[str, list[float]], held_out: dict[str, list[list[float]]]) -> JobResult:
        return JobResult(losses, held_out, self.timed.seconds)


def scored_on(test: list[Utterance]) -> list[Utterance]:
    """The held-out utterances the LM and the flow are scored on while they train: every k-th, at most ~100
    (each held-out speaker keeps several, for references; tiny's 216 cost the flow ~4 s an evaluation)."""
    return test[:: max(1, len(test) // 100)]


def last_checkpoint(run: Path) -> Path:
    return run / (run / "latest").read_text().strip()


# Each job imports its own stage's code: a job's process then loads only what it runs (importing all four
# stages takes ~20 s of a 2-core machine, most of it transformers', which only the LM needs).
def _tokenizer_job(j: _Job) -> JobResult:
    """The speech tokenizer on the training speakers, the tokens the trainings read, the text tokenizer."""
    from mmspeech_tokenizer.model import build_vocab
    from mmspeech_tokenizer.train import train as train_tok

    tcfg = _tokenizer_config(j.size, build_vocab([u.text or "" for u in j.train]))
    tcfg = dataclasses.replace(tcfg, train=j.train_config(2e-3, max_frames=8000))
    tok, h = j.timed(
        "train_tokenizer",
        train_tok,
        tcfg,
        j.train,
        j.out / "runs/tokenizer",
        device=j.job.device,
        cache_features=True,  # the quickstart's corpora fit in memory (tiny: ~170 MB of log-mels)
    )
    j.timed(
        "extract_tokens", extract_features, tok.eval(), j.read, j.out / "features/tokens", 8, desc="tokens"
    )
    text_tok = TextTokenizer.train_bpe([u.text or "" for u in j.train], vocab_size=500, min_frequency=1)
    text_tok.save(j.out / "runs/text_tokenizer")
    return j.result({"tokenizer": [m["loss"] for m in h]}, {})


def _vae_job(j: _Job) -> JobResult:
    """The VAE on the training speakers, the latents the flow reads."""
    from mmspeech_vae.train import train as train_vae

    vcfg = vae_config(j.size, **j.train_fields())
    vae, h = j.timed("train_vae", train_vae, vcfg, j.train, j.out / "runs/vae", device=j.job.device)
    j.timed(
        "extract_latents", extract_features, vae.eval(), j.read, j.out / "features/latents", 8, desc="latents"
    )
    return j.result({"vae_mel": [m["mel"] for m in h]}, {})


def _llm_job(j: _Job) -> JobResult:
    """The LM on the tokenizer job's tokens and text tokenizer, scored on held-out speakers."""
    from mmspeech_llm.data import LLMDataset
    from mmspeech_llm.train import train as train_llm
    from mmspeech_tokenizer.infer import load_speech_tokenizer

    text_tok = TextTokenizer.from_pretrained(j.out / "runs/text_tokenizer")
    tok = load_speech_tokenizer(j.last("tokenizer"))
    lcfg = _llm_config(j.size, text_tok.vocab_size, tok.vocab_size)
    lcfg = dataclasses.replace(lcfg, train=j.train_config(j.size.llm_lr, max_frames=j.size.max_frames))
    tokens = load_shards(j.out / "features/tokens")
    _, h = j.timed(
        "train_llm",
        train_llm,
        lcfg,
        LLMDataset(j.train, tokens, text_tok, lcfg, cache_references=True),  # log-mels: ~110 MB
        j.out / "runs/llm",
        j.job.device,
        val_dataset=LLMDataset(j.held, tokens, text_tok, lcfg, cache_references=True),
        trained_with={"text_tokenizer": text_tok.fingerprint(), "tokenizer": tok.fingerprint()},
    )
    return j.result({"llm": [m["loss"] for m in h]}, {"llm": _val_curve(h, "loss")})


def _flow_job(j: _Job) -> JobResult:
    """The flow on the tokens and the latents, scored on held-out speakers."""
    from mmspeech_flow.data import FlowDataset
    from mmspeech_flow.train import train as train_flow
    from mmspeech_tokenizer.infer import load_speech_tokenizer
    from mmspeech_vae.model import DACVAE

    tok = load_speech_tokenizer(j.last("tokenizer"))
    vae = DACVAE.from_pretrained(j.last("vae"))
    # the training speech's statistics: the held-out utterances' latents are in the folder too
    stats = latent_stats(j.out / "features/latents", ids=[u.id for u in j.train])
    fcfg = _flow_config(j.size, tok.vocab_size, vae.config, stats)
    fcfg = dataclasses.replace(fcfg, train=j.train_config(2e-3, max_frames=j.size.max_frames))
    tokens, latents = load_shards(j.out / "features/tokens"), load_shards(j.out / "features/latents")

    def data(utts: list[Utterance]) -> FlowDataset:
        keep = {u.id for u in utts}
        ids = sorted(keep & set(tokens) & set(latents))
        return FlowDataset(tokens, latents, fcfg.model.ratio, {u.id: u.speaker for u in utts}, ids=ids)

    _, h = j.timed(
        "train_flow",
        train_flow,
        fcfg,
        data(j.train),
        j.out / "runs/flow",
        j.job.device,
        val_dataset=data(j.held),
        trained_with={"tokenizer": tok.fingerprint(), "vae": vae.fingerprint()},
    )
    return j.result({"flow": [m["fm"] for m in h]}, {"flow": _val_curve(h, "fm")})


JOBS: dict[str, Callable[[_Job], JobResult]] = {
    "tokenizer": _tokenizer_job,
    "vae": _vae_job,
    "llm": _llm_job,
    "flow": _flow_job,
}


def _val_curve(history: list[dict[str, float]], metric: str) -> list[list[float]]:
    """[step, held-out loss] at the steps that validated."""
    return [[i + 1, round(m[f"val/{metric}"], 4)] for i, m in enumerate(history) if f"val/{metric}" in m]


def run_job(job: TrainingJob) -> JobResult:
    """Run one training in this process, on ``job.threads`` CPU threads for its duration, and write its
    result (:func:`result_path`), which marks it done."""
    before = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    try:
        result = JOBS[job.stage](_Job(job))
    finally:
        torch.set_num_threads(before)
    atomic_write_text(result_path(job.out, job.stage), json.dumps(dataclasses.asdict(result)) + "\n")
    return result


def result_path(out: str | Path, stage: str) -> Path:
    """Where a finished training's :class:`JobResult` is written: it exists only once the job is done."""
    return Path(out) / "runs" / f"{stage}.result.json"


def train_all(
    out: str | Path,
    size: QuickstartSize,
    device: str,
    minutes: float | None = None,
    jobs: int = 1,
    threads: int | None = None,
    precision: str = DEFAULT_PRECISION,
) -> dict[str, JobResult]:
    """The four trainings on the corpus in ``out/corpus``, each writing to ``out``; results by stage, in
    :data:`STAGES` order. ``jobs``: 1, one after another in this process; 2, side by side, each in its own
    process on ``threads`` CPU threads (default: half the cores). ``minutes``: a training budget
    (:func:`stage_budget`; side by side each of :data:`PAIRS` has all of it). ``precision``: the
    trainings' arithmetic, "fp32" or "bf16" (each stage's: :func:`precision_amp`).

    It continues what ``out`` holds: a training whose result is written is done and not run again, one that
    was stopped resumes from its latest checkpoint (the same steps, batches and random numbers as if never
    stopped, on as many threads), and extraction skips the utterances already extracted."""
    jobs, precision = check_jobs(jobs), check_precision(precision)
    lanes = (STAGES,) if jobs == 1 else PAIRS
    if jobs == 2 and threads is None:
        threads = max(1, (os.cpu_count() or 1) // 2)  # each of the two processes on half the cores
    results = {s: _read_result(result_path(out, s)) for s in STAGES if result_path(out, s).is_file()}
    if results:
        log.info("trainings already done in %s: %s", out, ", ".join(results))

    def job(stage: str) -> TrainingJob:
        """The stage's job, its budget what the stages before it in its lane left (computed as it starts)."""
        budget = None
        if minutes is not None:
            lane = next(lane for lane in lanes if stage in lane)
            spent = [results[s].seconds[f"train_{s}"] for s in lane[: lane.index(stage)]]
            budget = stage_budget(60 * minutes, size.steps, stage, spent, lane)
        return TrainingJob(stage, str(out), size, device, budget, threads, precision_amp(precision, stage))

    if jobs == 1:
        for stage in STAGES:
            if stage not in results:
                results[stage] = run_job(job(stage))
    else:
        _side_by_side(Path(out), job, results)
    return {s: results[s] for s in STAGES}


def _side_by_side(out: Path, make: Callable[[str], TrainingJob], results: dict[str, JobResult]) -> None:
    """Two jobs at a time, each in a process of its own; a job starts when the jobs it needs are done. A
    failed job stops the other and raises (its traceback is in the output above). Stages already in
    ``results`` are not run."""
    waiting = [s for s in STAGES if s not in results]
    running: dict[str, tuple[subprocess.Popen[bytes], int]] = {}  # stage -> process, progress bar row
    try:
        while waiting or running:
            for stage in [s for s in waiting if all(n in results for n in NEEDS[s])]:
                if len(running) == 2:
                    break
                row = min({0, 1} - {r for _, r in running.values()})
                running[stage] = (_start(make(stage), row), row)
                waiting.remove(stage)
            time.sleep(0.2)
            for stage, (proc, _) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[stage]
                if proc.returncode:
                    raise RuntimeError(
                        f"the {stage} training failed (exit code {proc.returncode}; see above)"
                    )
                if not result_path(out, stage).is_file():  # e.g. this package changed under a running job
                    raise RuntimeError(f"the {stage} training's process ended without writing its result")
                results[stage] = _read_result(result_path(out, stage))
    finally:
        for proc, _ in running.values():
            proc.terminate()
            proc.wait()


def _start(job: TrainingJob, row: int) -> subprocess.Popen[bytes]:
    path = Path(job.out) / "runs" / f"{job.stage}.job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job.to_json() + "\n")
    env = dict(os.environ)
    if sys.stderr.isatty():  # each job's progress bar on a line of its own (tqdm reads TQDM_* defaults)
        env["TQDM_POSITION"] = str(row)
    level = str(logging.getLogger().getEffectiveLevel())
    # imported, not run as __main__ (``-m``): its classes and loggers keep this module's name
    run = f"from {__name__} import job_main; job_main()"
    return subprocess.Popen([sys.executable, "-c", run, str(path), level], env=env)


def _read_result(path: Path) -> JobResult:
    return JobResult(**json.loads(path.read_text()))


def job_main(argv: Sequence[str] | None = None) -> None:
    """A side-by-side job's process: run the job file's training (which writes its result)."""
    p = argparse.ArgumentParser(description=job_main.__doc__)
    p.add_argument("job", type=Path)
    p.add_argument("log_level", type=int, nargs="?", default=logging.INFO)
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_job(TrainingJob.from_json(a.job.read_text()))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole group: the quickstart says what to do, once
        raise SystemExit(130) from None
