"""A small OpenAI-compatible speech server (``POST /v1/audio/speech``) on the standard library.

    mmspeech serve --bundle bundle/ --voices voices/ --port 8000
    curl -s localhost:8000/v1/audio/speech -d '{"model": "mmspeech", "input": "Hello!", "voice": "alice"}' > out.wav

Voices are presets made with ``mmspeech voice`` (``<voices>/<name>.safetensors``), loaded once and kept.
Concurrent requests are batched: one worker gathers what arrives within ``batch_window_ms`` (up to
``max_batch``) and synthesises it in one batch per stage. Each request's audio depends only on its own
text, voice and seed, never on its batch-mates. Nothing per request is cached, so memory stays flat.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from mmspeech_llm.text import TextError, normalize_text

from .tts import TTS, Voice

log = logging.getLogger(__name__)
FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}


class RequestError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    text: str
    voice: Voice
    seed: int
    result: Future[torch.Tensor] = field(default_factory=Future)


class SpeechService:
    """The HTTP-free part: validate a request body, queue it for the batching worker, encode the audio."""

    def __init__(
        self,
        tts: TTS,
        voices_dir: str | Path | None = None,
        max_chars: int = 4000,
        max_batch: int = 8,
        batch_window_ms: float = 10.0,
    ) -> None:
        self.tts, self.max_chars = tts, max_chars
        self.max_batch, self.window = max_batch, batch_window_ms / 1000.0
        self.voices: dict[str, Voice] = {}
        if voices_dir is not None:
            for p in sorted(Path(voices_dir).glob("*.safetensors")):
                self.voices[p.stem] = tts.load_voice(p)
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.batch_sizes: list[int] = []  # observability: what the worker actually batched
        threading.Thread(target=self._worker, daemon=True, name="mmspeech-batcher").start()

    # ---- batching worker ------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            batch = [self.jobs.get()]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self.jobs.get(timeout=left))
                except queue.Empty:
                    break
            for one_shot in (False, True):  # the TTS batches one mode at a time
                group = [j for j in batch if j.voice.one_shot == one_shot]
                if group:
                    self._run(group)

    def _run(self, group: list[_Job]) -> None:
        self.batch_sizes.append(len(group))
        try:
            wav = self.tts.synthesize_batch(
                [j.text for j in group], [j.voice for j in group], seed=[j.seed for j in group]
            )
            for j, x in zip(group, wav.unbatch()):
                j.result.set_result(x)
        except Exception as e:
            if len(group) == 1:
                group[0].result.set_exception(e)
            else:  # one failing request must not fail its batch-mates
                for j in group:
                    self._run([j])

    # ---- requests -------------------------------------------------------------------------------
    def speech(self, body: dict[str, Any]) -> tuple[bytes, str]:
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise RequestError(400, "'input' must be a non-empty string")
        if len(text) > self.max_chars:
            raise RequestError(400, f"'input' has {len(text)} characters; the limit is {self.max_chars}")
        name = body.get("voice")
        if not isinstance(name, str) or name not in self.voices:
            raise RequestError(400, f"unknown voice {name!r}; available: {sorted(self.voices)}")
        fmt = body.get("response_format", "wav")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise RequestError(400, f"response_format {fmt!r} is not supported; use one of {sorted(FORMATS)}")
        speed = body.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)):
            raise RequestError(400, f"'speed' must be a number, got {speed!r}")
        if speed != 1.0:
            raise RequestError(400, f"'speed' {speed} is not supported; only 1.0 is")
        seed = body.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise RequestError(400, f"'seed' must be an integer in [0, 2**63), got {seed!r}")
        try:
            normalize_text(text)  # bad text fails here, alone, before it joins a batch
        except TextError as e:
            raise RequestError(400, str(e)) from e
        job = _Job(text, self.voices[name], seed)
        self.jobs.put(job)
        x = job.result.result().clamp(-1, 1).numpy()
        if fmt == "pcm":  # OpenAI's pcm: raw 16-bit little-endian mono at 24 kHz
            return (x * 32767).astype("<i2").tobytes(), FORMATS[fmt]
        buf = io.BytesIO()
        sf.write(buf, x.astype(np.float32), self.tts.sample_rate, format=fmt.upper(), subtype="PCM_16")
        return buf.getvalue(), FORMATS[fmt]


def make_server(service: SpeechService, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            self._send(
                status, json.dumps({"error": {"message": message, "type": kind}}).encode(), "application/json"
            )

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, b'{"status": "ok"}', "application/json")
            elif self.path == "/v1/voices":
                self._send(200, json.dumps({"voices": sorted(service.voices)}).encode(), "application/json")
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/audio/speech":
                return self._error(404, f"no route {self.path}")
            try:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(body, dict):
                    raise RequestError(400, "the body must be a JSON object")
                audio, ctype = service.speech(body)
            except json.JSONDecodeError as e:
                return self._error(400, f"invalid JSON: {e}")
            except RequestError as e:
                return self._error(e.status, str(e))
            except Exception as e:  # a bug or a model failure: say so, keep serving
                log.exception("synthesis failed")
                return self._error(500, f"{type(e).__name__}: {e}")
            self._send(200, audio, ctype)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s " + fmt, self.address_string(), *args)

    return ThreadingHTTPServer((host, port), Handler)
