"""End-to-end zero-shot / one-shot TTS composed from the stage packages.

text ─► LLM (speaker vector from the reference) ─► speech tokens ─► flow (speaker + prompt latents) ─► latents
─► VAE decoder ─► 24 kHz audio. Long text is split into sentences and synthesised as one batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmspeech_core import (
    CheckpointError,
    FlowPrompt,
    Latents,
    LMPrompt,
    SpeakerEmbedding,
    SpeechTokens,
    Waveform,
)
from mmspeech_core.checkpoint import load_state_dict, save_state_dict
from mmspeech_core.stages import SpeechTokenizerStage
from mmspeech_core.training import default_device
from mmspeech_flow.config import FlowInferConfig
from mmspeech_flow.model import FlowModel, FlowStream
from mmspeech_llm.config import SamplingConfig
from mmspeech_llm.model import SpeechLM
from mmspeech_llm.text import TextError, TextTokenizer
from mmspeech_tokenizer.infer import load_speech_tokenizer
from mmspeech_vae.model import DACVAE
from tqdm import tqdm

from .bundle import check_bundle
from .reference import ReferencePolicy, load_reference
from .text import split_sentences

log = logging.getLogger(__name__)
VOICE_VERSION = "1"
PAUSE_S = 0.15  # silence between sentences


@dataclass
class VoicePrompt:
    """A one-shot voice's prompt: the reference's transcript ids, speech tokens and latents, trimmed so the
    latents are exactly ``len(tokens) × ratio`` frames (every consumer then counts the prompt alike)."""

    text: torch.Tensor  # (N,) text ids
    tokens: torch.Tensor  # (P,) speech tokens
    latents: torch.Tensor  # (C, P·ratio)

    def __post_init__(self) -> None:
        if self.text.dim() != 1 or self.tokens.dim() != 1 or self.latents.dim() != 2:
            raise ValueError(
                "VoicePrompt needs text (N,), tokens (P,) and latents (C, T); got "
                f"{tuple(self.text.shape)}, {tuple(self.tokens.shape)}, {tuple(self.latents.shape)}"
            )
        if not self.latents.is_floating_point() or not torch.isfinite(self.latents).all():
            raise ValueError("VoicePrompt.latents must hold finite floats")


@dataclass
class Voice:
    """Everything a reference recording contributes, cached so it is computed once (a voice preset)."""

    llm_speaker: torch.Tensor  # (D_llm,)
    flow_speaker: torch.Tensor  # (D_flow,)
    prompt: VoicePrompt | None = None  # one-shot only

    def __post_init__(self) -> None:
        for name in ("llm_speaker", "flow_speaker"):
            x = getattr(self, name)
            if x.dim() != 1 or not x.is_floating_point() or not torch.isfinite(x).all():
                raise ValueError(f"Voice.{name} must be a 1-D vector of finite floats")

    @property
    def one_shot(self) -> bool:
        return self.prompt is not None

    def save(self, path: str | os.PathLike[str]) -> None:
        tensors = {"llm_speaker": self.llm_speaker, "flow_speaker": self.flow_speaker}
        if self.prompt is not None:
            tensors |= {f"prompt_{k}": v for k, v in dataclasses.asdict(self.prompt).items()}
        save_state_dict(tensors, Path(path), metadata={"kind": "mmspeech-voice", "version": VOICE_VERSION})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Voice:
        """A saved preset, checked for shape and finite values (:meth:`TTS.load_voice` also checks that it
        fits a bundle)."""
        t = load_state_dict(Path(path))
        speakers, prompt_keys = (
            {"llm_speaker", "flow_speaker"},
            {"prompt_text", "prompt_tokens", "prompt_latents"},
        )
        if not speakers <= set(t) or set(t) - speakers not in (set(), prompt_keys):
            raise CheckpointError(f"{path} is not a voice preset (tensors {sorted(t)})")
        try:
            prompt = (
                VoicePrompt(t["prompt_text"], t["prompt_tokens"], t["prompt_latents"])
                if "prompt_text" in t
                else None
            )
            return cls(t["llm_speaker"], t["flow_speaker"], prompt)
        except ValueError as e:
            raise CheckpointError(f"voice preset {path}: {e}") from e


@dataclass
class StreamChunk:
    audio: torch.Tensor  # (T,) at sample_rate
    sample_rate: int
    index: int
    elapsed_s: float  # since the call started: chunk 0's is the first-chunk latency
    final: bool


@dataclass
class StreamPiece:
    """A piece of one of several sentences streamed together (:meth:`TTS.stream_sentences`)."""

    job: int  # the sentence's position in the list streamed
    audio: torch.Tensor  # (T,) on the CPU; the pieces of a sentence join to its audio
    last: bool  # the sentence's last piece (it may be empty)


class TTS:
    def __init__(
        self,
        tokenizer: SpeechTokenizerStage,
        text_tokenizer: TextTokenizer,
        llm: SpeechLM,
        flow: FlowModel,
        vae: DACVAE,
        reference_policy: ReferencePolicy | None = None,
        allow_part_mismatch: bool = False,
    ) -> None:
        self.tokenizer, self.text_tokenizer, self.llm, self.flow, self.vae = (
            tokenizer,
            text_tokenizer,
            llm.eval(),
            flow.eval(),
            vae.eval(),
        )
        self.policy = reference_policy or ReferencePolicy()
        self.check_compatible()
        self.check_provenance(allow_part_mismatch)

    @property
    def sample_rate(self) -> int:
        return self.vae.sample_rate

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], device: str | None = None, allow_part_mismatch: bool = False
    ) -> TTS:
        """Load a bundle. Parts from different training runs are refused unless ``allow_part_mismatch`` or
        the bundle was written with it."""
        d = Path(directory)
        info = check_bundle(d)
        device = default_device(device)
        return cls(
            load_speech_tokenizer(d / "tokenizer", device),
            TextTokenizer.from_pretrained(d / "text_tokenizer"),
            SpeechLM.from_pretrained(d / "llm", device),
            FlowModel.from_pretrained(d / "flow", device),
            DACVAE.from_pretrained(d / "vae", device),
            allow_part_mismatch=allow_part_mismatch or bool(info.get("allow_part_mismatch", False)),
        )

    def check_compatible(self) -> None:
        """Stages trained separately must agree on vocabularies, rates and widths."""
        lm, fm, vc = self.llm.config.model, self.flow.config.model, self.vae.config.model
        problems = []
        if lm.speech_vocab != fm.vocab_size:
            problems.append(f"llm speech_vocab {lm.speech_vocab} != flow vocab_size {fm.vocab_size}")
        if self.tokenizer.vocab_size != fm.vocab_size:
            problems.append(
                f"tokenizer codebook {self.tokenizer.vocab_size} != flow vocab_size {fm.vocab_size}"
            )
        if abs(lm.token_rate - fm.token_rate) > 1e-6 or abs(self.tokenizer.frame_rate - fm.token_rate) > 1e-6:
            problems.append(
                f"token rates differ: tokenizer {self.tokenizer.frame_rate}, llm {lm.token_rate}, flow {fm.token_rate}"
            )
        if abs(fm.latent_rate - vc.frame_rate) > 1e-6:
            problems.append(f"flow latent_rate {fm.latent_rate} != vae frame rate {vc.frame_rate}")
        if fm.latent_dim != vc.latent_dim or fm.spk_in_dim != vc.latent_dim:
            problems.append(
                f"flow latent_dim {fm.latent_dim} / spk_in_dim {fm.spk_in_dim} != vae latent_dim {vc.latent_dim}"
            )
        if self.text_tokenizer.vocab_size > lm.text_vocab:
            problems.append(
                f"text tokenizer has {self.text_tokenizer.vocab_size} tokens, llm text_vocab is {lm.text_vocab}"
            )
        if problems:
            raise CheckpointError("bundle parts do not fit together: " + "; ".join(problems))

    def check_provenance(self, allow_mismatch: bool = False) -> None:
        """The LM and the flow record fingerprints of the parts they were trained against (the text and
        speech tokenizers, the VAE); parts from another run fit by shape yet give wrong audio. A mismatch
        raises ``CheckpointError`` unless ``allow_mismatch`` (then it is logged)."""
        parts: dict[str, Any] = {
            "text_tokenizer": self.text_tokenizer,
            "tokenizer": self.tokenizer,
            "vae": self.vae,
        }
        fingerprint = functools.cache(lambda part: parts[part].fingerprint())  # hashing weights: once each
        problems = []
        for name, stage in (("llm", self.llm), ("flow", self.flow)):
            for part, expected in stage.trained_with.items():
                if part in parts and (found := fingerprint(part)) != expected:
                    problems.append(f"the {name} was trained with {part} {expected}, this bundle has {found}")
        if not problems:
            return
        message = "bundle parts come from different training runs: " + "; ".join(problems)
        if not allow_mismatch:
            raise CheckpointError(
                message + " (use the parts each stage was trained with, or allow_part_mismatch)"
            )
        log.warning("%s (allowed)", message)

    # ---- voices -----------------------------------------------------------------------------------
    def check_voice(self, voice: Voice) -> Voice:
        """Raise ``ValueError`` unless ``voice`` was made for parts shaped like this bundle's."""
        lm, fm = self.llm.config.model, self.flow.config.model
        problems = []
        if voice.llm_speaker.shape != (lm.spk_dim,):
            problems.append(
                f"llm_speaker has shape {tuple(voice.llm_speaker.shape)}, the LM expects ({lm.spk_dim},)"
            )
        if voice.flow_speaker.shape != (fm.spk_dim,):
            problems.append(
                f"flow_speaker has shape {tuple(voice.flow_speaker.shape)}, the flow expects ({fm.spk_dim},)"
            )
        if (prompt := voice.prompt) is not None:
            c, frames = prompt.latents.shape
            if c != fm.latent_dim or frames != len(prompt.tokens) * fm.ratio:
                problems.append(
                    f"prompt latents are {(c, frames)}, expected ({fm.latent_dim}, {len(prompt.tokens)} × {fm.ratio})"
                )
            if len(prompt.tokens) and int(prompt.tokens.max()) >= fm.vocab_size:
                problems.append(f"prompt tokens exceed the speech vocabulary ({fm.vocab_size})")
        if problems:
            raise ValueError("voice does not fit this bundle: " + "; ".join(problems))
        return voice

    def load_voice(self, path: str | os.PathLike[str]) -> Voice:
        """A saved preset, checked for finite values and for fit with this bundle."""
        try:
            return self.check_voice(Voice.load(path))
        except ValueError as e:
            raise CheckpointError(f"voice preset {path}: {e}") from e

    @torch.inference_mode()
    def make_voice(
        self, reference: str | os.PathLike[str] | Waveform, reference_text: str | None = None
    ) -> Voice:
        """Zero-shot voice (speaker vectors only) or, with the reference's transcript, a one-shot voice."""
        wav = load_reference(reference, self.sample_rate, self.policy)
        ref_lat = self.vae.encode(wav)
        voice = Voice(
            llm_speaker=self.llm.embed_speaker(wav).vectors[0].cpu(),
            flow_speaker=self.flow.embed_speaker(ref_lat).vectors[0].cpu(),
        )
        if reference_text is not None:
            tokens, latents = self.tokenizer.encode(wav).unbatch()[0], ref_lat.unbatch()[0]
            # the two extractors may disagree by a frame: trim once, here, so every consumer (the flow,
            # streaming's chunk arithmetic) sees prompt latents of exactly len(tokens) × ratio frames
            r = self.flow.config.model.ratio
            n = min(len(tokens), latents.shape[-1] // r)
            text = torch.tensor(self.text_tokenizer.encode(reference_text))
            voice.prompt = VoicePrompt(text, tokens[:n].cpu(), latents[:, : n * r].cpu())
        return voice

    # ---- synthesis --------------------------------------------------------------------------------
    def _tokens(
        self, ids: list[torch.Tensor], voices: list[Voice], sampling: SamplingConfig | None, seeds: list[int]
    ) -> SpeechTokens:
        spk = SpeakerEmbedding(torch.stack([v.llm_speaker for v in voices]))
        return self.llm.generate(ids, spk, self._lm_prompt(voices), sampling, seeds)

    def _lm_prompt(self, voices: list[Voice]) -> LMPrompt | None:
        prompts = [v.prompt for v in voices if v.prompt is not None]
        if not prompts:
            return None
        tokens = SpeechTokens.from_list([p.tokens for p in prompts], self.llm.config.model.token_rate)
        return LMPrompt([p.text for p in prompts], tokens)

    def _flow_conditions(self, voices: list[Voice]) -> tuple[SpeakerEmbedding, FlowPrompt | None]:
        spk = SpeakerEmbedding(torch.stack([v.flow_speaker for v in voices]))
        prompts = [v.prompt for v in voices if v.prompt is not None]
        if not prompts:
            return spk, None
        fm = self.flow.config.model
        return spk, FlowPrompt(
            SpeechTokens.from_list([p.tokens for p in prompts], fm.token_rate),
            Latents.from_list([p.latents for p in prompts], fm.latent_rate),
        )

    def _latents(
        self,
        tokens: SpeechTokens,
        voices: list[Voice],
        infer: FlowInferConfig | None,
        seeds: list[int],
        chunked: bool = False,
    ) -> Latents:
        spk, prompt = self._flow_conditions(voices)
        return self.flow.generate(tokens, spk, prompt, infer=infer, seed=seeds, chunked=chunked)

    @torch.inference_mode()
    def synthesize_batch(
        self,
        texts: Sequence[str],
        voices: Sequence[Voice],
        seed: int | Sequence[int] = 0,
        sampling: SamplingConfig | None = None,
        flow_infer: FlowInferConfig | None = None,
        pause_s: float = PAUSE_S,
        max_sentence_chars: int = 200,
        max_batch_sentences: int = 16,
        max_chars: int | None = None,
        progress: bool | None = None,
        long_form: str = "independent",
    ) -> Waveform:
        """Many texts, one voice each. The texts' sentences run through the stages in batches of at most
        ``max_batch_sentences`` (memory stays bounded however long the text); item i's result does not
        depend on its batch-mates or on the batching.

        ``seed``: one per text, or an int (text i then uses ``seed + 1000·i``); sentence k of a text adds k.
        ``max_chars``: refuse a text longer than this (``TextError``). ``progress``: a progress bar (default:
        when there is more than one batch). ``long_form``: ``"independent"`` sentences, or ``"continue"``:
        each sentence after the first is a continuation of the one before it (that sentence's text, speech
        tokens and latents are its one-shot prompt; the speaker vectors stay the voice's), so timbre and
        speaking rate carry over. The window is one sentence (at most ``max_sentence_chars``); sentences of a
        text then run one after another (sentence k of every text in one batch).
        """
        jobs = self.plan(texts, voices, seed, max_sentence_chars, max_chars)
        if long_form == "continue":
            return self._join(
                len(texts), jobs, self._continued(jobs, sampling, flow_infer, progress), pause_s
            )
        if long_form != "independent":
            raise ValueError(f"long_form must be 'independent' or 'continue', got {long_form!r}")
        batches = [jobs[k : k + max_batch_sentences] for k in range(0, len(jobs), max_batch_sentences)]
        show = progress if progress is not None else len(batches) > 1
        wavs: list[torch.Tensor] = []
        with tqdm(total=len(jobs), desc="synthesise", unit="sentence", disable=not show) as bar:
            for batch in batches:
                wavs += self.synthesize_sentences(batch, sampling, flow_infer)
                bar.update(len(batch))
        return self._join(len(texts), jobs, wavs, pause_s)

    def plan(
        self,
        texts: Sequence[str],
        voices: Sequence[Voice],
        seed: int | Sequence[int] = 0,
        max_sentence_chars: int = 200,
        max_chars: int | None = None,
    ) -> list[SentenceJob]:
        """Validate texts, voices and seeds and split the texts into sentences, each with its text ids, voice
        and seed (``TextError`` / ``ValueError`` before any work). Seeds as in :meth:`synthesize_batch`."""
        if len(texts) != len(voices):
            raise ValueError(f"{len(texts)} texts for {len(voices)} voices")
        if len({v.one_shot for v in voices}) > 1:
            raise ValueError("mix of one-shot and zero-shot voices in one batch: synthesise them separately")
        for v in {id(v): v for v in voices}.values():
            self.check_voice(v)
        base = [seed + 1000 * i for i in range(len(texts))] if isinstance(seed, int) else list(seed)
        if len(base) != len(texts):
            raise ValueError(f"{len(base)} seeds for {len(texts)} texts")
        jobs = []
        for i, text in enumerate(texts):
            if max_chars is not None and len(text) > max_chars:
                raise TextError(f"text {i} has {len(text)} characters; the limit is {max_chars}")
            for k, sentence in enumerate(split_sentences(text, max_sentence_chars)):
                # seeds follow (text, sentence index): independent of what else is in the batch
                ids = torch.tensor(self.text_tokenizer.encode(sentence))  # bad text fails before any work
                jobs.append(SentenceJob(i, sentence, ids, voices[i], base[i] + k))
        return jobs

    @torch.inference_mode()
    def synthesize_sentences(
        self,
        jobs: Sequence[SentenceJob],
        sampling: SamplingConfig | None = None,
        flow_infer: FlowInferConfig | None = None,
    ) -> list[torch.Tensor]:
        """One batch of planned sentences (from any texts, one voice mode) through the LM, the flow and the
        VAE -> one (T,) waveform per sentence, on the CPU. A server schedules sentences itself with this and
        :meth:`plan`, so short requests need not wait behind long ones."""
        return self._run_sentences(jobs, sampling, flow_infer)[0]

    def _run_sentences(
        self, jobs: Sequence[SentenceJob], sampling: SamplingConfig | None, flow_infer: FlowInferConfig | None
    ) -> tuple[list[torch.Tensor], SpeechTokens, Latents]:
        """Each sentence's (T,) waveform on the CPU, and the speech tokens and latents that made them."""
        if len({j.voice.one_shot for j in jobs}) > 1:
            raise ValueError("mix of one-shot and zero-shot voices in one batch: synthesise them separately")
        voices, seeds = [j.voice for j in jobs], [j.seed for j in jobs]
        tokens = self._tokens([j.ids for j in jobs], voices, sampling, seeds)
        empty = [j.sentence for j, n in zip(jobs, tokens.lengths.tolist()) if n == 0]
        if empty:
            raise RuntimeError(f"the LM produced no speech for sentence(s) {empty}")
        latents = self._latents(tokens, voices, flow_infer, seeds)
        wavs = self.vae.decode(latents).unbatch()
        _check_finite(wavs)
        return [w.cpu() for w in wavs], tokens, latents

    def _continued(
        self,
        jobs: list[SentenceJob],
        sampling: SamplingConfig | None,
        flow_infer: FlowInferConfig | None,
        progress: bool | None,
    ) -> list[torch.Tensor]:
        """Round k synthesises sentence k of every text, each prompted with its text's sentence k-1."""
        by_text: dict[int, list[int]] = {}
        for n, j in enumerate(jobs):
            by_text.setdefault(j.text_index, []).append(n)
        wavs: list[torch.Tensor] = [torch.zeros(0)] * len(jobs)
        previous: dict[int, VoicePrompt] = {}
        rounds = max(len(v) for v in by_text.values())
        with tqdm(total=len(jobs), desc="synthesise", unit="sentence", disable=not progress) as bar:
            for k in range(rounds):
                todo = [ns[k] for ns in by_text.values() if k < len(ns)]
                batch = [
                    dataclasses.replace(j, voice=dataclasses.replace(j.voice, prompt=previous[j.text_index]))
                    if j.text_index in previous
                    else j
                    for j in (jobs[n] for n in todo)
                ]
                for mode in (False, True):  # round 0 may mix zero- and one-shot voices
                    part = [(n, j) for n, j in zip(todo, batch) if j.voice.one_shot == mode]
                    if not part:
                        continue
                    out, tokens, latents = self._run_sentences([j for _, j in part], sampling, flow_infer)
                    for (n, j), w, t, z in zip(part, out, tokens.unbatch(), latents.unbatch()):
                        # this sentence, as the next one's prompt
                        wavs[n], previous[j.text_index] = w, VoicePrompt(j.ids.cpu(), t.cpu(), z.cpu())
                bar.update(len(todo))
        return wavs

    def pause(self, seconds: float = PAUSE_S) -> torch.Tensor:
        """(T,) silence put between a text's sentences."""
        return torch.zeros(int(seconds * self.sample_rate))

    def join(self, sentences: Sequence[torch.Tensor], pause_s: float = PAUSE_S) -> torch.Tensor:
        """One text's (T,) sentence waveforms, in order, with ``pause_s`` of silence between them."""
        pause = self.pause(pause_s)
        return torch.cat([x for k, w in enumerate(sentences) for x in ((pause, w) if k else (w,))])

    def _join(
        self, n_texts: int, jobs: list[SentenceJob], wavs: list[torch.Tensor], pause_s: float
    ) -> Waveform:
        """Each text's sentences in order, with ``pause_s`` of silence between them."""
        out: list[list[torch.Tensor]] = [[] for _ in range(n_texts)]
        for job, w in zip(jobs, wavs):
            out[job.text_index].append(w)
        return Waveform.from_list([self.join(x, pause_s) for x in out], self.sample_rate)

    @torch.inference_mode()
    def resynthesize_tokens(self, tokens: SpeechTokens, voice: Voice, seed: int = 0) -> Waveform:
        """Speech tokens (e.g. extracted from a recording) -> audio in ``voice``: the flow and the VAE alone,
        without the LM (the ladder's oracle rung). Item i uses seed ``seed + i``."""
        voices = [self.check_voice(voice)] * len(tokens)
        latents = self._latents(tokens, voices, None, [seed + i for i in range(len(tokens))])
        wavs = self.vae.decode(latents).unbatch()
        _check_finite(wavs)
        return Waveform.from_list([w.cpu() for w in wavs], self.sample_rate)

    def synthesize(
        self,
        text: str,
        reference: str | os.PathLike[str] | Waveform | None = None,
        reference_text: str | None = None,
        voice: Voice | None = None,
        seed: int = 0,
        **kw: Any,
    ) -> Waveform:
        """One text -> Waveform (1, T) at 24 kHz. Give a ``reference`` recording (+ its transcript for one-shot)
        or a prepared ``voice``."""
        if voice is None:
            if reference is None:
                raise ValueError("give a reference recording or a voice")
            voice = self.make_voice(reference, reference_text)
        return self.synthesize_batch([text], [voice], seed=seed, **kw)

    @torch.inference_mode()
    def stream(
        self,
        text: str,
        voice: Voice,
        seed: int = 0,
        sampling: SamplingConfig | None = None,
        flow_infer: FlowInferConfig | None = None,
        chunk_tokens: int | None = None,
        decode_context: int | None = None,
    ) -> Iterator[StreamChunk]:
        """Yield audio while the LM is still generating: every ``chunk_tokens`` (default the flow's chunk size)
        final tokens, the flow computes the new chunks alone, continuing its cached state
        (:class:`~mmspeech_flow.model.FlowStream`: each chunk is computed once, and the latents equal the
        offline chunk-causal ones), and the VAE decodes the new frames with ``decode_context``
        frames of context on both sides (default: the decoder's receptive field, so streamed audio equals
        the offline decode of the same latents); frames that lack right context are held back until it
        arrives. The flow needs a fixed-step solver (euler / midpoint / rk4)."""
        t0 = time.perf_counter()
        jobs = self.plan([text], [voice], seed)  # sentences, their ids and seeds, as synthesize has them
        index = 0
        for si, job in enumerate(jobs):
            pieces = self._stream_jobs([job], sampling, flow_infer, chunk_tokens, decode_context)
            lead = self.pause() if si else None  # the silence synthesize puts between sentences
            for piece in pieces:
                audio, last = piece.audio, piece.last
                if audio.numel() or last:
                    if lead is not None:
                        audio, lead = torch.cat([lead, audio]), None
                    final = last and si == len(jobs) - 1
                    elapsed = time.perf_counter() - t0
                    yield StreamChunk(audio, self.sample_rate, index, elapsed, final)
                    index += 1

    @property
    def can_stream(self) -> bool:
        """Whether the flow's solver allows streaming (fixed-step: euler, midpoint, rk4)."""
        return self.flow.config.infer.solver != "dopri5"

    @torch.inference_mode()
    def stream_sentence(
        self,
        job: SentenceJob,
        sampling: SamplingConfig | None = None,
        flow_infer: FlowInferConfig | None = None,
        chunk_tokens: int | None = None,
        decode_context: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """One planned sentence (:meth:`plan`) as (T_i,) audio pieces on the CPU, as :meth:`stream` makes
        them; the pieces join to the sentence."""
        for piece in self._stream_jobs([job], sampling, flow_infer, chunk_tokens, decode_context):
            yield piece.audio

    @torch.inference_mode()
    def stream_sentences(
        self,
        jobs: Sequence[SentenceJob],
        sampling: SamplingConfig | None = None,
        flow_infer: FlowInferConfig | None = None,
        chunk_tokens: int | None = None,
        decode_context: int | None = None,
    ) -> Iterator[StreamPiece]:
        """Several planned sentences streamed together (a server's concurrent streams): the LM decodes them
        as one batch; the flow advances the sentences whose chunks become final at a step as one batch (all
        zero-shot sentences, or one-shot ones with prompts of equal token length: their chunks line up; a
        sentence that ends goes on alone for its last piece); the VAE decodes the new windows of every
        sentence due at a step in one padded call. Yields each sentence's pieces as
        :meth:`stream_sentence` makes them for it alone (to float tolerance: a batched call differs from a
        lone one by ~1e-6), tagged with the sentence's position in ``jobs``; a sentence whose LM finishes
        first ends first. All zero-shot or all one-shot voices, as in a synthesis batch."""
        if len({j.voice.one_shot for j in jobs}) > 1:
            raise ValueError("mix of one-shot and zero-shot voices in one batch: stream them separately")
        yield from self._stream_jobs(jobs, sampling, flow_infer, chunk_tokens, decode_context)

    def _stream_jobs(
        self,
        jobs: Sequence[SentenceJob],
        sampling: SamplingConfig | None,
        flow_infer: FlowInferConfig | None,
        chunk_tokens: int | None,
        decode_context: int | None,
    ) -> Iterator[StreamPiece]:
        """Pieces of the sentences ``jobs``, streamed as one LM batch; each sentence's last piece (maybe
        empty) has ``last`` set."""
        fm = self.flow.config.model
        chunk = chunk_tokens or fm.chunk_size
        context = decode_context if decode_context is not None else self.vae.decoder_context
        states = [
            _SentenceStream(job, context, torch.zeros(fm.latent_dim, 0, device=self.flow.device))
            for job in jobs
        ]
        groups = self._flow_groups(states, flow_infer)
        voices = [j.voice for j in jobs]
        spk = SpeakerEmbedding(torch.stack([v.llm_speaker for v in voices]))
        steps = self.llm.stream(
            [j.ids for j in jobs], spk, self._lm_prompt(voices), sampling, [j.seed for j in jobs]
        )
        # reading tokens back waits for the device: on a GPU, read them every few steps in one copy (the
        # pieces come at most that many steps later); on the CPU it costs nothing, so every step
        poll = 4 if self.llm.device.type == "cuda" else 1
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        for step in _with_end(steps):
            if step is not None:
                pending.append(step)
                if len(pending) < poll:
                    continue
            due = self._take_tokens(states, pending, chunk, ended=step is None)
            pending = []
            yield from self._pieces(states, groups, due)

    def _flow_groups(self, states: list[_SentenceStream], infer: FlowInferConfig | None) -> list[_FlowGroup]:
        """One flow stream per prompt length: its sentences' chunks become final at the same LM steps."""
        by_prompt: dict[int, list[int]] = {}
        for i, st in enumerate(states):
            by_prompt.setdefault(st.n_prompt, []).append(i)
        groups = []
        for members in by_prompt.values():
            spk, prompt = self._flow_conditions([states[i].job.voice for i in members])
            flow = self.flow.stream(spk, prompt, infer, [states[i].job.seed for i in members])
            groups.append(_FlowGroup(flow, members))
        return groups

    def _take_tokens(
        self,
        states: list[_SentenceStream],
        steps: list[tuple[torch.Tensor, torch.Tensor]],
        chunk: int,
        ended: bool,
    ) -> list[tuple[int, bool]]:
        """Append the polled steps' tokens (one copy from the device) to each live sentence; returns the
        sentences with audio due, as ``(position, is_last)``: a chunk of newly final tokens, or the end of
        the sentence (its EOS, or the end of the LM's decoding)."""
        fm = self.flow.config.model
        if steps:
            tokens = torch.stack([t for t, _ in steps], 1).tolist()  # (B, k)
            alive = torch.stack([a for _, a in steps], 1).tolist()
        due = []
        for i, st in enumerate(states):
            if st.finished:
                continue
            if steps:
                st.tokens += [t for t, a in zip(tokens[i], alive[i]) if a]
            if ended or (steps and not alive[i][-1]):
                if not st.tokens:
                    raise RuntimeError(f"the LM produced no speech for {st.job.sentence!r}")
                st.finished, st.final_tokens = True, len(st.tokens)
                due.append((i, True))
                continue
            # tokens whose flow frames are final: whole chunks (counted from the prompt start) - lookahead
            final = ((st.n_prompt + len(st.tokens) - fm.lookahead) // fm.chunk_size) * fm.chunk_size
            if final - st.n_prompt - st.final_tokens >= chunk:
                st.final_tokens = final - st.n_prompt
                due.append((i, False))
        return due

    def _advance_flows(
        self, states: list[_SentenceStream], groups: list[_FlowGroup], due: list[tuple[int, bool]]
    ) -> dict[int, torch.Tensor]:
        """The newly final (C, frames) latents of each due sentence. A group's sentences advance as one
        batch while they go on together; a sentence that ends is split off for its last call."""
        out: dict[int, torch.Tensor] = {}
        for group in list(groups):
            mine = [(i, last) for i, last in due if i in group.members]
            for i in [i for i, last in mine if last]:
                alone = group if group.members == [i] else group.split([i], groups)
                out[i] = alone.flow.advance(torch.tensor(states[i].tokens), last=True)
                groups.remove(alone)
            going = [i for i, last in mine if not last]
            if not going:
                continue
            if set(going) != set(group.members):  # one prompt length, one LM batch: never apart
                raise RuntimeError(f"streamed sentences {going} fell out of step with {group.members}")
            tokens = torch.tensor([states[i].tokens for i in group.members])  # (B, N)
            out |= dict(zip(group.members, group.flow.advance(tokens)))
        return out

    def _pieces(
        self, states: list[_SentenceStream], groups: list[_FlowGroup], due: list[tuple[int, bool]]
    ) -> Iterator[StreamPiece]:
        """The audio of the frames that became final in each due sentence: the flows advance by group, the
        VAE decodes every window in one padded call. Frames without enough right context are held back
        until it arrives (or the sentence ends)."""
        new = self._advance_flows(states, groups, due)
        windows: list[torch.Tensor] = []
        cuts: list[tuple[int, int] | None] = []  # each window's samples to keep
        for i, last in due:
            st = states[i]
            ctx = st.decode_context
            st.latents = z = torch.cat([st.latents, new[i].to(st.latents)], dim=-1)
            end = z.shape[-1] if last else max(st.emitted, z.shape[-1] - ctx)
            if end <= st.emitted:
                cuts.append(None)
                continue
            start = max(0, st.emitted - ctx)  # left context ...
            windows.append(z[:, start : min(z.shape[-1], end + ctx)])  # ... and right, cropped off below
            cuts.append(((st.emitted - start) * self.vae.hop, (end - start) * self.vae.hop))
            st.emitted = end
        wavs: list[torch.Tensor] = []
        if windows:
            batch = Latents.from_list(windows, self.flow.config.model.latent_rate)
            wavs = [w.cpu() for w in self.vae.decode(batch.to(self.vae.device)).unbatch()]
            _check_finite(wavs)
        made = iter(wavs)
        for (i, last), cut in zip(due, cuts):
            audio = next(made)[cut[0] : cut[1]] if cut is not None else torch.zeros(0)
            if audio.numel() or last:
                yield StreamPiece(i, audio, last)


def _with_end(steps: Iterator[Any]) -> Iterator[Any]:
    """``steps``, then ``None``."""
    yield from steps
    yield None


def _check_finite(wavs: Sequence[torch.Tensor]) -> None:
    """Never hand back NaN / Inf audio as if it were speech (a server would play it as full-scale noise)."""
    bad = [i for i, w in enumerate(wavs) if not torch.isfinite(w).all()]
    if bad:
        raise RuntimeError(
            f"synthesis produced non-finite audio for item(s) {bad}: check the voice and the models"
        )


@dataclass
class SentenceJob:
    """One sentence of a request: which text it belongs to, its text ids, voice and seed."""

    text_index: int
    sentence: str
    ids: torch.Tensor  # (N,) text token ids
    voice: Voice
    seed: int


@dataclass
class _SentenceStream:
    """Progress of one streamed sentence."""

    job: SentenceJob
    decode_context: int  # latent frames of context on each side of a decoded window
    latents: torch.Tensor  # (C, T) the final latent frames so far
    tokens: list[int] = field(default_factory=list)  # speech tokens generated so far
    final_tokens: int = 0  # tokens whose latent frames are final
    emitted: int = 0  # latent frames already sent as audio
    finished: bool = False  # its LM row has ended: the last piece is out

    @property
    def n_prompt(self) -> int:
        """One-shot prompt tokens before the sentence's own (the flow's chunks count from the prompt start)."""
        prompt = self.job.voice.prompt
        return len(prompt.tokens) if prompt is not None else 0


@dataclass
class _FlowGroup:
    """Streamed sentences whose flows advance as one batch: ``flow``'s rows, in ``members`` order
    (positions in the job list)."""

    flow: FlowStream  # the flow's cached state: each chunk computed once
    members: list[int]

    def split(self, moved: list[int], groups: list[_FlowGroup]) -> _FlowGroup:
        """Move the sentences ``moved`` to a new group (added to ``groups``), which is returned."""
        flow = self.flow.split([self.members.index(i) for i in moved])
        self.members = [i for i in self.members if i not in moved]
        groups.append(out := _FlowGroup(flow, list(moved)))
        return out
