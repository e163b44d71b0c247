"""Time to the first audio: in process (``TTS.stream``) and over HTTP (``mmspeech serve``, 127.0.0.1).

    uv run --no-sync python benchmarks/first_audio.py --preset tiny             # CPU
    python benchmarks/first_audio.py --preset base --device cuda                 # the base preset on a GPU
    python benchmarks/first_audio.py --preset base --device cuda --lm-decode auto compiled  # eager graph, compiled

Builds a random-weight bundle of the preset (every stage's production shapes for ``base``: the 0.5B LM,
the base flow and DAC-VAE), makes a zero-shot voice from a 3 s reference once (a cached voice, as a server
holds it), then times, after a warm-up, ``--repeat`` requests of one sentence: the first streamed chunk and
the whole stream in process, the whole offline synthesis, and over HTTP the first audio bytes of a
``"stream": true`` request and of a plain one. Random weights cannot stop early (EOS is blocked below
``min_len_ratio``), so every request generates the same number of tokens: the speed figures are real.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from mmspeech_pipeline.cli import LM_DECODE

sys.path.insert(0, str(Path(__file__).parent))
from run import table  # noqa: E402
from serve_load import first_bytes, wait_up  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
# untimed rounds first: a flow stream's first chunk runs eagerly at the first request of its shape, is
# captured as a CUDA graph at the second and replayed after (the LM's decoder graph is captured at once)
WARM = 2
CORPUS = [TEXT, "Hello there, how are you today?", "Please call me back when you have a moment."]


def _ms(seconds: Iterable[float]) -> float:
    """The median of timings in seconds, in milliseconds."""
    return 1000 * statistics.median(seconds)


def make_bundle(preset: str, out: Path, tokens_per_text: float) -> Path:
    from mmspeech_flow.config import FlowConfig
    from mmspeech_flow.config import tiny_config as flow_tiny
    from mmspeech_flow.model import FlowModel
    from mmspeech_llm.config import small_config
    from mmspeech_llm.config import tiny_config as llm_tiny
    from mmspeech_llm.model import SpeechLM
    from mmspeech_llm.text import TextTokenizer
    from mmspeech_pipeline.bundle import write_bundle
    from mmspeech_tokenizer.config import S3Config
    from mmspeech_tokenizer.s3 import S3SpeechTokenizer
    from mmspeech_vae.config import VAEConfig
    from mmspeech_vae.config import tiny_config as vae_tiny
    from mmspeech_vae.model import DACVAE

    torch.manual_seed(0)
    base = preset == "base"
    tok_cfg = S3Config() if base else S3Config(n_audio_state=128, n_audio_head=2, n_audio_layer=1)
    S3SpeechTokenizer.random_init(tok_cfg).save_pretrained(out / "tok")
    tt = TextTokenizer.train_bpe(CORPUS * 3, vocab_size=300, min_frequency=1)
    tt.save(out / "text")
    lcfg = (
        small_config(text_vocab=tt.vocab_size)
        if base
        else llm_tiny(text_vocab=tt.vocab_size, speech_vocab=6561)
    )
    fixed = dict(min_len_ratio=tokens_per_text, max_len_ratio=tokens_per_text)
    SpeechLM(dataclasses.replace(lcfg, sampling=dataclasses.replace(lcfg.sampling, **fixed))).save_pretrained(
        out / "llm"
    )
    vcfg = VAEConfig() if base else vae_tiny()
    latent = vcfg.model.latent_dim
    FlowModel(
        FlowConfig() if base else flow_tiny(vocab_size=6561, latent_dim=latent, spk_in_dim=latent)
    ).save_pretrained(out / "flow")
    DACVAE(vcfg).save_pretrained(out / "vae")
    parts = {"tokenizer": "tok", "text_tokenizer": "text", "llm": "llm", "flow": "flow", "vae": "vae"}
    return write_bundle(out / "bundle", **{k: out / v for k, v in parts.items()})


def in_process(
    bundle: Path, device: str, repeat: int, voice_path: Path, streams: int = 1, lm_decode: str = "auto"
) -> tuple[list[list[object]], float]:
    from mmspeech_core import Waveform
    from mmspeech_pipeline.tts import TTS

    tts = TTS.from_pretrained(bundle, device=device)
    tts.llm.decode_mode = lm_decode  # type: ignore[assignment]
    g = torch.Generator().manual_seed(0)
    voice = tts.make_voice(
        Waveform.from_list([0.1 * torch.randn(3 * tts.sample_rate, generator=g)], tts.sample_rate)
    )
    voice.save(voice_path)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    first, stream_total, offline, audio_s = [], [], [], 0.0
    for k in range(repeat + WARM):
        chunks = []
        t = time.perf_counter()
        for c in tts.stream(TEXT, voice, seed=k):
            chunks.append(c)
        sync()
        total = time.perf_counter() - t
        t = time.perf_counter()
        wav = tts.synthesize(TEXT, voice=voice, seed=k)
        sync()
        if k >= WARM:
            first.append(chunks[0].elapsed_s)
            stream_total.append(total)
            offline.append(time.perf_counter() - t)
            audio_s = float(wav.durations()[0])
    rows = [
        ["stream: first chunk", _ms(first), ""],
        ["stream: whole", _ms(stream_total), statistics.median(stream_total) / audio_s],
        ["offline synthesize", _ms(offline), statistics.median(offline) / audio_s],
    ]
    rows += _first_chunk_parts(tts, voice, repeat, sync)
    if streams > 1:
        rows += _together(tts, voice, streams, repeat, sync, audio_s)
    del tts
    return rows, audio_s


def _first_chunk_parts(tts, voice, repeat: int, sync) -> list[list[object]]:  # type: ignore[no-untyped-def]
    """Where the first chunk's time goes, each part alone and synchronised: the LM up to the tokens the
    first chunk needs (its prefill included), the flow's first chunk, the VAE's first window."""
    from mmspeech_core import Latents, SpeakerEmbedding

    fm = tts.flow.config.model
    need = fm.chunk_size + fm.lookahead
    eager = dataclasses.replace(tts.flow.config.infer, cuda_graph=False)
    lm, flow, flow_eager, vae = [], [], [], []
    for k in range(repeat + WARM):
        job = tts.plan([TEXT], [voice], seed=k)[0]
        t = time.perf_counter()
        steps = tts.llm.stream([job.ids], SpeakerEmbedding(voice.llm_speaker[None]), None, None, [k])
        tokens = torch.stack([next(steps)[0] for _ in range(need)], 1)  # (1, need)
        tokens = tokens.cpu()  # waits for the LM
        t_lm = time.perf_counter() - t
        spk, prompt = tts._flow_conditions([voice])
        t = time.perf_counter()
        tts.flow.stream(spk, prompt, eager, [k]).advance(tokens)
        sync()
        t_eager = time.perf_counter() - t
        t = time.perf_counter()
        # (1, C, chunk frames): as a stream computes it (a replayed CUDA graph on a GPU)
        z = tts.flow.stream(spk, prompt, None, [k]).advance(tokens)
        sync()
        t_flow = time.perf_counter() - t
        window = Latents.from_list([z[0]], fm.latent_rate).to(tts.vae.device)
        t = time.perf_counter()
        tts.vae.decode(window)
        sync()
        if k >= WARM:
            lm.append(t_lm)
            flow.append(t_flow)
            flow_eager.append(t_eager)
            vae.append(time.perf_counter() - t)
    return [
        [f"  first chunk: LM prefill + {need} tokens", _ms(lm), ""],
        [f"  first chunk: flow ({fm.chunk_size} tokens, as streamed)", _ms(flow), ""],
        ["  first chunk: flow, no CUDA graph", _ms(flow_eager), ""],
        ["  first chunk: VAE decode", _ms(vae), ""],
    ]


def _together(tts, voice, n: int, repeat: int, sync, audio_s: float) -> list[list[object]]:  # type: ignore[no-untyped-def]
    """``n`` concurrent streams as one batch (``TTS.stream_sentences``) against one offline batch of ``n``:
    each stream's first piece (median over streams and rounds) and the real-time factor of the batch
    (wall time / audio made)."""
    first, whole, offline = [], [], []
    for k in range(repeat + WARM):
        jobs = [tts.plan([TEXT], [voice], seed=100 * k + i)[0] for i in range(n)]
        t, seen = time.perf_counter(), {}
        for piece in tts.stream_sentences(jobs):
            seen.setdefault(piece.job, time.perf_counter() - t)
        sync()
        total = time.perf_counter() - t
        t = time.perf_counter()
        tts.synthesize_sentences(jobs)
        sync()
        if k >= WARM:
            first += list(seen.values())
            whole.append(total)
            offline.append(time.perf_counter() - t)
    med = statistics.median
    return [
        [f"{n} streams together: first chunk", _ms(first), ""],
        [f"{n} streams together: whole", _ms(whole), med(whole) / (n * audio_s)],
        [f"offline batch of {n}", _ms(offline), med(offline) / (n * audio_s)],
    ]


def over_http(
    bundle: Path, device: str, repeat: int, voice_path: Path, port: int, lm_decode: str = "auto"
) -> list[list[object]]:
    voices = voice_path.parent
    cmd = [sys.executable, "-m", "mmspeech_pipeline.cli", "serve", "--bundle", str(bundle)]
    cmd += ["--voices", str(voices), "--port", str(port), "--device", device, "--lm-decode", lm_decode]
    server_log = voices.parent / "server.log"
    with open(server_log, "wb") as f:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_up(url, proc)
        for name, extra in (("HTTP stream: true", {"stream": True}), ("HTTP whole response", {})):
            body = {"input": TEXT, "voice": voice_path.stem, "response_format": "pcm", **extra}
            runs = [first_bytes(url + "/v1/audio/speech", {**body, "seed": k}) for k in range(repeat + WARM)][
                WARM:
            ]
            rows.append([f"{name}: first bytes", _ms(r[0] for r in runs), ""])
            rows.append([f"{name}: last bytes", _ms(r[1] for r in runs), ""])
    finally:
        proc.terminate()
        t = time.perf_counter()
        try:
            proc.wait(timeout=20)
            print(f"the server stopped {time.perf_counter() - t:.1f} s after SIGTERM", file=sys.stderr)
        except subprocess.TimeoutExpired:  # seen on an H100 and an H200: the server ignored SIGTERM
            proc.send_signal(signal.SIGUSR1)  # every thread's stack into its log (faulthandler)
            time.sleep(2)
            proc.kill()
            proc.wait()
            tail = server_log.read_text(errors="replace").splitlines()[-80:]
            print("the server did not stop within 20 s of SIGTERM: killed; its log ends", *tail, sep="\n")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "base"], default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=5, help="timed requests per row (after one warm-up)")
    p.add_argument("--tokens-per-text", type=float, default=3.0, help="speech tokens per text token")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--no-http", action="store_true", help="in-process figures only")
    p.add_argument("--streams", type=int, default=8, help="also time this many streams as one batch (1: not)")
    p.add_argument(
        "--lm-decode",
        nargs="+",
        default=["auto"],
        choices=LM_DECODE,
        help="the LM's decode mode (mmspeech --lm-decode); several: each in turn, on the same bundle",
    )
    a = p.parse_args()
    name = (
        torch.cuda.get_device_name()
        if a.device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(a.preset, Path(tmp), a.tokens_per_text)
        (Path(tmp) / "voices").mkdir()
        voice_path = Path(tmp) / "voices" / "bench.safetensors"
        for mode in a.lm_decode:
            title = f"time to first audio: {a.preset} preset, random weights, {name}, zero-shot cached voice"
            rows, audio_s = in_process(bundle, a.device, a.repeat, voice_path, a.streams, mode)
            title += f", LM decode {mode}, {audio_s:.1f} s of audio, median of {a.repeat}"
            table(f"{title}: in process", ["what", "ms", "RTF"], rows)  # printed now: HTTP may fail
            if not a.no_http:
                rows = over_http(bundle, a.device, a.repeat, voice_path, a.port, mode)
                table(f"{title}: over HTTP (127.0.0.1)", ["what", "ms", "RTF"], rows)


if __name__ == "__main__":
    main()
