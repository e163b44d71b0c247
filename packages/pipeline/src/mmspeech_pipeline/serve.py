"""OpenAI-compatible speech server on FastAPI + uvicorn (the ``[serve]`` extra).

    mmspeech serve --bundle bundle/ --voices voices/ --port 8000
    curl -s localhost:8000/v1/audio/speech -H 'Content-Type: application/json' \\
         -d '{"model": "mmspeech", "input": "Hello!", "voice": "alice"}' > out.wav

Endpoints: ``POST /v1/audio/speech`` (OpenAI's schema plus ``seed``; ``"stream": true`` or
``"stream_format": "audio"`` streams the audio chunk by chunk as the chunk-causal flow makes it (what
:meth:`TTS.stream` yields; sentence by sentence where the flow's solver cannot stream), ``"sse"`` as
OpenAI's events),
``GET/POST /v1/voices``, ``DELETE /v1/voices/{id}``, ``GET /health``, and the generated docs at ``/docs``.
With an API key set every endpoint but ``/health`` needs ``Authorization: Bearer <key>``.

Sentences of all requests are batched by :class:`SentenceScheduler`; a request's audio depends only on its
own text, voice and seed. Bodies are read with a size limit and a deadline before any handler runs, so a
slow or lying client cannot hold the server; a client that goes away has its unstarted sentences dropped.
"""

from __future__ import annotations

import asyncio
import base64
import faulthandler
import json
import logging
import os
import re
import secrets
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from mmspeech_core.audio import encode_audio, pcm16, writable_formats
from mmspeech_llm.text import TextError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .reference import ReferenceAudioError
from .scheduler import SentenceScheduler, Ticket
from .tts import TTS, Voice

log = logging.getLogger(__name__)
API_KEY_ENV = "MMSPEECH_API_KEY"
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm", "mp3": "audio/mpeg"}
VOICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # no dots or slashes: never leaves the folder

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


@dataclass
class ServerSettings:
    max_chars: int = 4000  # longest accepted input text
    max_batch: int = 8  # most sentences synthesised as one batch
    batch_window_ms: float = 10.0  # how long an idle worker waits for batch-mates
    max_body_bytes: int = 64 * 1024  # JSON bodies
    max_upload_bytes: int = 20 * 1024 * 1024  # reference recordings
    body_timeout_s: float = 10.0  # a body must arrive whole within this
    request_timeout_s: float = 300.0  # queueing + synthesis of one request
    api_key: str | None = None  # None: no authentication

    def __post_init__(self) -> None:
        if self.api_key == "":
            raise ValueError("the API key is empty: unset it or give a real key")


class SpeechRequest(BaseModel):
    """OpenAI's ``/v1/audio/speech`` body, plus ``seed`` and ``stream``. Unknown fields are ignored, as
    OpenAI clients send some (e.g. ``instructions``)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("mmspeech", description="accepted for compatibility; the server has one model")
    input: str = Field(..., min_length=1, description="text to speak")
    voice: str = Field(..., description="a voice id from GET /v1/voices")
    response_format: Literal["wav", "flac", "pcm", "mp3"] = "wav"
    speed: float = Field(1.0, description="only 1.0 is supported")
    seed: int = Field(0, ge=0, lt=2**63, description="sampling seed: same request, same audio")
    stream: bool = Field(False, description="stream the audio as it is made (same as stream_format=audio)")
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="audio: raw pcm or wav bytes as they are made; sse: OpenAI's speech.audio events"
    )


class VoiceInfo(BaseModel):
    id: str
    one_shot: bool


class VoiceList(BaseModel):
    voices: list[VoiceInfo]


# ---- voices ---------------------------------------------------------------------------------------------
class VoiceStore:
    """The voices folder (``<id>.safetensors``, as ``mmspeech voice`` writes) and the loaded presets."""

    def __init__(self, tts: TTS, folder: str | os.PathLike[str]) -> None:
        self.tts, self.folder = tts, Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"voices folder not found: {self.folder} (make presets with `mmspeech voice`)"
            )
        self._lock = threading.Lock()
        self._voices = {p.stem: tts.load_voice(p) for p in sorted(self.folder.glob("*.safetensors"))}

    def get(self, voice_id: str) -> Voice:
        with self._lock:
            if voice_id not in self._voices:
                raise _error(400, f"unknown voice {voice_id!r}; available: {sorted(self._voices)}", "voice")
            return self._voices[voice_id]

    def list(self) -> VoiceList:
        with self._lock:
            return VoiceList(
                voices=[VoiceInfo(id=k, one_shot=v.one_shot) for k, v in sorted(self._voices.items())]
            )

    def add(self, voice_id: str, voice: Voice, overwrite: bool) -> None:
        with self._lock:
            if voice_id in self._voices and not overwrite:
                raise _error(409, f"voice {voice_id!r} exists (send overwrite=true to replace it)", "name")
            voice.save(self.folder / f"{voice_id}.safetensors")  # atomic: a crash leaves the old preset
            self._voices[voice_id] = voice

    def delete(self, voice_id: str) -> None:
        with self._lock:
            if not VOICE_ID.fullmatch(voice_id) or voice_id not in self._voices:
                raise _error(404, f"no voice {voice_id!r}")
            (self.folder / f"{voice_id}.safetensors").unlink(missing_ok=True)
            del self._voices[voice_id]


# ---- errors ---------------------------------------------------------------------------------------------
def _error(status: int, message: str, param: str | None = None) -> HTTPException:
    return HTTPException(status, detail={"message": message, "param": param})


def _error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        d = exc.detail
        message, param = (d["message"], d.get("param")) if isinstance(d, dict) else (str(d), None)
        return JSONResponse(_error_body(exc.status_code, message, param), exc.status_code, exc.headers)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # every bad field named, e.g. "speed: Input should be a valid number, unable to parse string"
        parts, params = [], []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            params.append(".".join(loc) or "body")
            parts.append(f"{params[-1]}: {e.get('msg', 'invalid')}")
        return JSONResponse(_error_body(400, "; ".join(parts), ",".join(params)), 400)

    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]


class BodyLimits:
    """ASGI middleware: read a request's whole body before the app sees it, within ``max_bytes`` (larger
    for uploads) and ``timeout_s``; answer 413 / 408 itself otherwise. A slow or lying client then costs
    one idle coroutine for at most ``timeout_s``, never a worker."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        upload = scope["path"].startswith("/v1/voices")
        limit = self.settings.max_upload_bytes if upload else self.settings.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_error(send, 413, f"the body is {int(declared)} bytes; the limit is {limit}")
        chunks, size = [], 0
        deadline = time.monotonic() + self.settings.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await _send_error(
                    send, 408, f"the body did not arrive within {self.settings.body_timeout_s:g} s"
                )
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _send_error(send, 413, f"the body exceeds {limit} bytes")
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        return await self.app(scope, replay, send)


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps(_error_body(status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + [(b"connection", b"close")]}
    )
    await send({"type": "http.response.body", "body": body})


# ---- the app --------------------------------------------------------------------------------------------
def create_app(
    tts: TTS,
    voices_dir: str | os.PathLike[str],
    settings: ServerSettings | None = None,
    worker_thread: bool = True,
) -> FastAPI:
    """The server as an ASGI app (run it with :func:`serve`, or any ASGI server). ``app.state.scheduler``
    is the batching worker, which does all the model work (synthesis and new voices); close it with
    ``app.state.scheduler.close()`` when done. ``worker_thread=False``: the worker has no thread of its
    own, :func:`serve` runs it on its caller's thread (faster on a CPU: see :class:`SentenceScheduler`)."""
    s = settings or ServerSettings()
    store = VoiceStore(tts, voices_dir)
    scheduler = SentenceScheduler(tts, s.max_batch, s.batch_window_ms / 1000.0, thread=worker_thread)
    app = FastAPI(title="mmspeech", version="0.1.0", summary="Zero-shot TTS with an OpenAI-compatible API")
    app.state.scheduler, app.state.voices, app.state.settings = scheduler, store, s
    app.add_middleware(BodyLimits, settings=s)  # type: ignore[arg-type]
    _install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="the server's API key, when it has one")

    # a default, not Annotated: annotations are strings here and `bearer` is local to this function
    def authorise(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if s.api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), s.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})

    api = APIRouter(dependencies=[Depends(authorise)])

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "pending_sentences": scheduler.pending}

    @api.get("/v1/voices", response_model=VoiceList)
    def list_voices() -> VoiceList:
        return store.list()

    @api.post("/v1/voices", response_model=VoiceInfo, status_code=201)
    def add_voice(
        file: Annotated[UploadFile, File(description="reference recording (wav/flac/ogg/mp3, mono, 1-30 s)")],
        name: Annotated[
            str | None, Form(description="voice id: letters, digits, - and _ (default: random)")
        ] = None,
        transcript: Annotated[
            str | None, Form(description="what the recording says: makes a one-shot voice")
        ] = None,
        overwrite: Annotated[bool, Form()] = False,
    ) -> VoiceInfo:
        voice_id = name if name is not None else f"voice-{secrets.token_hex(4)}"
        if not VOICE_ID.fullmatch(voice_id):
            raise _error(400, f"voice name {voice_id!r}: use 1-64 letters, digits, '-' or '_'", "name")
        voice = _voice_from_upload(tts, scheduler, file, transcript)
        store.add(voice_id, voice, overwrite)
        return VoiceInfo(id=voice_id, one_shot=voice.one_shot)

    @api.delete("/v1/voices/{voice_id}", status_code=204)
    def delete_voice(voice_id: str) -> Response:
        store.delete(voice_id)
        return Response(status_code=204)

    @api.post(
        "/v1/audio/speech",
        response_class=Response,
        responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}, "description": "the audio"}},
    )
    async def speech(body: SpeechRequest, request: Request) -> Response:
        deadline = time.monotonic() + s.request_timeout_s
        if body.stream or body.stream_format is not None:
            pieces = _stream_request(body, store, scheduler, tts, s, deadline)
            kind = body.response_format
            if body.stream_format == "sse":
                return StreamingResponse(_sse(pieces), media_type="text/event-stream")
            return StreamingResponse(
                _audio_stream(pieces, tts.sample_rate, kind), media_type=MEDIA_TYPES[kind]
            )
        ticket, fmt = _submit(body, store, scheduler, tts, s)
        wavs = await _collect(ticket, request, deadline)
        audio = encode_audio(_joined(tts, wavs), tts.sample_rate, f".{fmt}")
        return Response(audio, media_type=MEDIA_TYPES[fmt])

    app.include_router(api)
    return app


def _joined(tts: TTS, wavs: list[torch.Tensor]) -> np.ndarray:
    """The sentences with the TTS's pause between them, as :meth:`TTS.join` makes them, but in numpy: no
    torch work on the web thread (see :func:`mmspeech_core.audio.encode_audio`)."""
    pause = tts.pause().numpy()
    parts = [w.numpy() for w in wavs]
    return np.concatenate([x for k, w in enumerate(parts) for x in ((pause, w) if k else (w,))])


def _submit(
    body: SpeechRequest,
    store: VoiceStore,
    scheduler: SentenceScheduler,
    tts: TTS,
    s: ServerSettings,
    on_chunk: Callable[[int, torch.Tensor | None], None] | None = None,
) -> tuple[Ticket, str]:
    """Check what the schema cannot, plan the sentences (bad text fails here, alone) and queue them."""
    if body.speed != 1.0:
        raise _error(400, f"'speed' {body.speed:g} is not supported; only 1.0 is", "speed")
    if len(body.input) > s.max_chars:
        raise _error(400, f"'input' has {len(body.input)} characters; the limit is {s.max_chars}", "input")
    fmt = body.response_format
    streaming = body.stream or body.stream_format is not None
    if streaming and fmt not in ("wav", "pcm"):
        raise _error(400, f"streamed audio is wav or pcm, not {fmt}", "response_format")
    if f".{fmt}" not in writable_formats() + [".pcm"]:
        raise _error(400, f"response_format {fmt} needs an encoder this machine lacks", "response_format")
    voice = store.get(body.voice)
    try:
        jobs = tts.plan([body.input], [voice], [body.seed])
    except TextError as e:
        raise _error(400, str(e), "input") from e
    return scheduler.submit(jobs, on_chunk), fmt


def _stream_request(
    body: SpeechRequest,
    store: VoiceStore,
    scheduler: SentenceScheduler,
    tts: TTS,
    s: ServerSettings,
    deadline: float,
) -> AsyncIterator[torch.Tensor]:
    """Queue a streamed request: chunk by chunk within each sentence where the flow can stream (a
    fixed-step solver), else sentence by sentence."""
    if not tts.can_stream:
        ticket, _ = _submit(body, store, scheduler, tts, s)
        return _sentences(ticket, tts, deadline)
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[tuple[int, torch.Tensor | None]] = asyncio.Queue()

    def on_chunk(k: int, piece: torch.Tensor | None) -> None:  # called from the scheduler's thread
        loop.call_soon_threadsafe(pieces.put_nowait, (k, piece))

    ticket, _ = _submit(body, store, scheduler, tts, s, on_chunk)
    return _chunks(ticket, tts, pieces, deadline)


async def _result(
    future: Future[torch.Tensor], deadline: float, request: Request | None = None
) -> torch.Tensor:
    """Wait for one sentence, checking for a vanished client (when ``request`` is given) and the deadline,
    before waiting and every 0.25 s (sentences that finish quickly must not hide a disconnect)."""
    waiter = asyncio.wrap_future(future)
    while True:
        if request is not None and await request.is_disconnected():
            raise _ClientGone
        left = deadline - time.monotonic()
        done, _ = await asyncio.wait({waiter}, timeout=max(0.0, min(0.25, left)))
        if done:
            if future.cancelled():  # only after another sentence of the request failed
                raise _error(500, "synthesis of the request failed")
            try:
                return waiter.result()
            except Exception as e:
                raise _error(500, f"synthesis failed: {type(e).__name__}: {e}") from e
        if left <= 0:
            raise _error(504, "the request took longer than the server's request timeout")


class _ClientGone(Exception):
    pass


async def _collect(ticket: Ticket, request: Request, deadline: float) -> list[torch.Tensor]:
    try:
        return [await _result(f, deadline, request) for f in ticket.futures]
    except _ClientGone:
        ticket.cancel()
        log.info("client went away: %d sentence(s) dropped", sum(f.cancelled() for f in ticket.futures))
        raise HTTPException(499, "client closed the request") from None
    finally:
        ticket.cancel()  # nothing left to do once we stop waiting (a no-op when all are done)


async def _sentences(ticket: Ticket, tts: TTS, deadline: float) -> AsyncIterator[torch.Tensor]:
    """Each sentence's audio (with the pause before it) as soon as it is ready. Starlette cancels this when
    the client disconnects; the ticket is then cancelled too."""
    try:
        for k, f in enumerate(ticket.futures):
            wav = await _result(f, deadline)
            yield wav if k == 0 else torch.cat([tts.pause(), wav])
    finally:
        ticket.cancel()


async def _chunks(
    ticket: Ticket,
    tts: TTS,
    pieces: asyncio.Queue[tuple[int, torch.Tensor | None]],
    deadline: float,
) -> AsyncIterator[torch.Tensor]:
    """A streaming ticket's audio pieces as the worker makes them (with the pause before every sentence
    but the first). Starlette cancels this when the client disconnects; the ticket is then cancelled too,
    and the worker stops at its next piece."""
    try:
        for k, future in enumerate(ticket.futures):
            if k:
                yield tts.pause()
            while True:
                try:
                    _, piece = await asyncio.wait_for(pieces.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise _error(504, "the request took longer than the server's request timeout") from None
                if piece is None:  # the sentence is settled: raises if it failed
                    await _result(future, deadline)
                    break
                if piece.numel():
                    yield piece
    finally:
        ticket.cancel()


async def _audio_stream(
    audio: AsyncIterator[torch.Tensor], sample_rate: int, fmt: str
) -> AsyncIterator[bytes]:
    if fmt == "wav":
        yield streaming_wav_header(sample_rate)
    async for wav in audio:
        yield pcm16(wav)


async def _sse(audio: AsyncIterator[torch.Tensor]) -> AsyncIterator[bytes]:
    """OpenAI's speech events: ``speech.audio.delta`` with base64 pcm, then ``speech.audio.done``."""
    async for wav in audio:
        delta = {"type": "speech.audio.delta", "audio": base64.b64encode(pcm16(wav)).decode()}
        yield f"data: {json.dumps(delta)}\n\n".encode()
    yield b'data: {"type": "speech.audio.done"}\n\n'


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF), as streaming players expect."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", unknown)
    )


def _voice_from_upload(
    tts: TTS, scheduler: SentenceScheduler, file: UploadFile, transcript: str | None
) -> Voice:
    """An uploaded recording -> a checked voice, made by the scheduler's worker (between batches); a bad
    recording or transcript is a 400 naming why."""
    suffix = Path(file.filename or "").suffix.lower()
    with tempfile.NamedTemporaryFile(
        suffix=suffix if re.fullmatch(r"\.\w{1,5}", suffix) else ".audio"
    ) as tmp:
        tmp.write(file.file.read())
        tmp.flush()
        try:
            return scheduler.call(lambda: tts.make_voice(tmp.name, transcript)).result()
        except (ReferenceAudioError, TextError) as e:
            raise _error(400, str(e).replace(tmp.name, file.filename or "upload"), "file") from e


# ---- running --------------------------------------------------------------------------------------------
WARM_UP_TEXT = "Hello, this is a warm-up sentence."


def warm_up(tts: TTS, voice: Voice, rounds: int = 2) -> float:
    """Synthesise a short sentence ``rounds`` times, streamed and whole, as requests do (through
    :meth:`TTS.stream_sentences` and :meth:`TTS.synthesize_sentences`), so that the first request finds the
    one-time work done: the LM's decoder built (its CUDA graph captured; compiled, with ``--lm-decode
    compiled``, which takes tens of seconds), the flow's first chunk captured as a CUDA graph (at the
    second stream), kernels and allocator warm. Returns the seconds it took. Nothing else changes: a
    request's audio depends only on its text, voice and seed."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    t = time.perf_counter()
    jobs = tts.plan([WARM_UP_TEXT], [voice], seed=0)
    for _ in range(rounds):
        for _piece in tts.stream_sentences(jobs):
            pass
        tts.synthesize_sentences(jobs)
    return time.perf_counter() - t


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the models load work starts: a port in use fails at once with one
    line (``OSError``), not a traceback from inside the server."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    return sock


def serve(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn on an already bound socket until Ctrl-C (or SIGTERM, or the scheduler is
    closed). A scheduler without a thread of its own (``create_app(worker_thread=False)``) works on the
    calling thread while uvicorn serves from another."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=5, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    scheduler: SentenceScheduler = app.state.scheduler
    if scheduler.has_thread:
        try:
            server.run(sockets=[sock])
        finally:
            scheduler.close()
        return
    web = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="mmspeech-http")
    web.start()

    def close_when_web_ends() -> None:  # the web server ending (a failure, say) ends the worker too
        web.join()
        scheduler.close()

    threading.Thread(target=close_when_web_ends, daemon=True).start()
    previous = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    if _main_thread():  # SIGTERM stops the server as Ctrl-C does (uvicorn's handlers need its main thread)
        signal.signal(signal.SIGTERM, _interrupt)
        if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: every thread's stack on stderr (a server stuck)
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        scheduler.run()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        t = time.monotonic()
        server.should_exit = True
        scheduler.close()
        web.join(timeout=15)
        # how long the stop took: a slow one (seen on GPUs) says whether the web server is what waits
        log.info(
            "stopped: the web server %s after %.1f s",
            "ended" if not web.is_alive() else "is stuck",
            time.monotonic() - t,
        )
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if _main_thread() and hasattr(signal, "SIGUSR1"):
            faulthandler.unregister(signal.SIGUSR1)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
