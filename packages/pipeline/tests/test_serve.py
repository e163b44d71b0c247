"""The FastAPI server: every endpoint through the test client, and the socket-level behaviour (batching,
head-of-line, disconnects, slow bodies, streaming) against a real uvicorn on 127.0.0.1."""

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import torch
import uvicorn
from fastapi.testclient import TestClient
from mmspeech_core.audio import pcm16
from mmspeech_pipeline.bundle import write_bundle
from mmspeech_pipeline.cli import main
from mmspeech_pipeline.scheduler import SentenceScheduler
from mmspeech_pipeline.serve import ServerSettings, bind, create_app, streaming_wav_header
from mmspeech_pipeline.tts import TTS
from mmspeech_tokenizer.infer import sample_wavs

REF = sample_wavs()[0]


@pytest.fixture(scope="module")
def tts(tmp_path_factory, make_parts):
    tmp = tmp_path_factory.mktemp("serve")
    return TTS.from_pretrained(write_bundle(tmp / "b", **make_parts(tmp)), device="cpu")


@pytest.fixture(scope="module")
def voice(tts):
    return tts.make_voice(REF)


def _voices_dir(tmp_path, voice):
    (tmp_path / "voices").mkdir(exist_ok=True)
    voice.save(tmp_path / "voices" / "alice.safetensors")
    return tmp_path / "voices"


@pytest.fixture
def client(tts, voice, tmp_path):
    app = create_app(tts, _voices_dir(tmp_path, voice), ServerSettings(batch_window_ms=200))
    with TestClient(app) as c:
        yield c
    app.state.scheduler.close()


def _alone(tts, voice, text, seed):
    return tts.synthesize(text, voice=voice, seed=seed).unbatch()[0].numpy()


def _speech(text, seed=0, **kw):
    return {"model": "mmspeech", "input": text, "voice": "alice", "seed": seed, **kw}


def test_speech_matches_the_python_api_in_every_format(client, tts, voice):
    r = client.post("/v1/audio/speech", json=_speech("hello there. how are you?", seed=1))
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    audio, sr = sf.read(io.BytesIO(r.content))
    ref = _alone(tts, voice, "hello there. how are you?", 1)  # two sentences, joined with the same pause
    assert sr == 24000 and len(audio) == len(ref) and np.abs(audio - ref).max() < 1e-4  # 16-bit rounding
    pcm = client.post("/v1/audio/speech", json=_speech("hello there. how are you?", 1, response_format="pcm"))
    assert pcm.headers["content-type"] == "audio/pcm"
    ints = np.frombuffer(pcm.content, "<i2").astype(int)
    assert np.abs(ints - np.round(audio * 32768)).max() <= 1  # libsndfile scales by 32768, pcm by 32767
    flac = client.post(
        "/v1/audio/speech", json=_speech("hello there. how are you?", 1, response_format="flac")
    )
    assert np.abs(sf.read(io.BytesIO(flac.content))[0] - audio).max() <= 2 / 32768
    assert client.get("/v1/voices").json() == {"voices": [{"id": "alice", "one_shot": False}]}
    assert client.get("/health").json()["status"] == "ok"
    assert "/v1/audio/speech" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "body, param, msg",
    [
        ({"input": "", "voice": "alice"}, "input", "at least 1 character"),
        ({"voice": "alice"}, "input", "Field required"),
        ({"input": "hi", "voice": "bob"}, "voice", "unknown voice 'bob'"),
        ({"input": "hi", "voice": ["alice"]}, "voice", "valid string"),
        ({"input": "hi", "voice": "alice", "response_format": "opus"}, "response_format", "'wav'"),
        ({"input": "hi", "voice": "alice", "response_format": ["wav"]}, "response_format", "'wav'"),
        ({"input": "hi", "voice": "alice", "speed": 1.5}, "speed", "only 1.0"),
        ({"input": "hi", "voice": "alice", "speed": "fast"}, "speed", "valid number"),
        ({"input": "hi", "voice": "alice", "speed": None}, "speed", "valid number"),
        ({"input": "hi", "voice": "alice", "seed": 2**64}, "seed", "less than"),
        ({"input": "hi", "voice": "alice", "seed": -1}, "seed", "greater than or equal"),
        ({"input": "hi\x00", "voice": "alice"}, "input", "unsupported characters"),
        ({"input": "x" * 4001, "voice": "alice"}, "input", "the limit is 4000"),
        (
            {"input": "hi", "voice": "alice", "stream": True, "response_format": "flac"},
            "response_format",
            "wav or pcm",
        ),
        ([1, 2], "body", "valid dictionary"),
    ],
)
def test_bad_fields_get_400_naming_the_field(client, body, param, msg):
    r = client.post("/v1/audio/speech", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and param in err["param"] and msg in err["message"]


@pytest.mark.parametrize(
    "raw, status",
    [
        (b'{"input": "hi", "voice": "alice"', 400),  # truncated JSON
        (b'{"input": "\xff\xfe", "voice": "alice"}', 400),  # invalid UTF-8
        (b"[" * 100_000 + b"]" * 100_000, 413),  # deeply nested and too big
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, 400),  # deeply nested, within the size limit
    ],
)
def test_malformed_bodies_are_client_errors(client, raw, status):
    r = client.post("/v1/audio/speech", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_wrong_method_is_405_and_unknown_route_404(client):
    assert client.get("/v1/audio/speech").status_code == 405
    assert client.post("/v1/nothing", json={}).status_code == 404


def test_upload_synthesise_and_delete_a_voice(client, tts):
    wav = io.BytesIO()
    x, sr = sf.read(str(REF))
    sf.write(wav, x, sr, format="WAV")
    r = client.post(
        "/v1/voices", files={"file": ("me.wav", wav.getvalue())}, data={"name": "bob", "transcript": "hi"}
    )
    assert r.status_code == 201 and r.json() == {"id": "bob", "one_shot": True}, r.text
    assert (client.app.state.voices.folder / "bob.safetensors").is_file()
    ids = [v["id"] for v in client.get("/v1/voices").json()["voices"]]
    assert ids == ["alice", "bob"]
    r = client.post("/v1/audio/speech", json={"input": "hello there.", "voice": "bob", "seed": 2})
    assert r.status_code == 200
    ref = tts.synthesize("hello there.", voice=tts.make_voice(REF, "hi"), seed=2).unbatch()[0].numpy()
    assert np.abs(sf.read(io.BytesIO(r.content))[0] - ref).max() < 1e-4
    again = client.post("/v1/voices", files={"file": ("me.wav", wav.getvalue())}, data={"name": "bob"})
    assert again.status_code == 409
    assert client.delete("/v1/voices/bob").status_code == 204
    assert client.delete("/v1/voices/bob").status_code == 404
    assert not (client.app.state.voices.folder / "bob.safetensors").exists()
    unnamed = client.post("/v1/voices", files={"file": ("me.wav", wav.getvalue())})
    assert unnamed.status_code == 201 and unnamed.json()["id"].startswith("voice-")


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "-x", "x" * 65, "naïve"])
def test_voice_names_never_leave_the_folder(client, name, tmp_path):
    r = client.post("/v1/voices", files={"file": ("a.wav", REF.read_bytes())}, data={"name": name})
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"
    assert sorted(p.name for p in client.app.state.voices.folder.iterdir()) == ["alice.safetensors"]


def test_bad_reference_uploads_are_400_with_the_reason(client):
    silent = io.BytesIO()
    sf.write(silent, np.zeros(48000), 24000, format="WAV")
    r = client.post("/v1/voices", files={"file": ("quiet.wav", silent.getvalue())}, data={"name": "q"})
    assert r.status_code == 400 and "silent" in r.json()["error"]["message"]
    r = client.post("/v1/voices", files={"file": ("x.wav", b"not audio")}, data={"name": "q"})
    assert r.status_code == 400 and "x.wav" in r.json()["error"]["message"]


def test_api_key_guards_everything_but_health(tts, voice, tmp_path):
    app = create_app(tts, _voices_dir(tmp_path, voice), ServerSettings(api_key="s3cret"))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.get("/v1/voices", headers=bad)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert c.post("/v1/audio/speech", json=_speech("hi."), headers=bad).status_code == 401
            assert c.delete("/v1/voices/alice", headers=bad).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/voices", headers=ok).status_code == 200
        assert c.post("/v1/audio/speech", json=_speech("hi."), headers=ok).status_code == 200
    app.state.scheduler.close()
    with pytest.raises(ValueError, match="empty"):
        ServerSettings(api_key="")


def test_scheduler_interleaves_a_short_request_with_a_long_one(tts, voice):
    """Sentence scheduling: a one-sentence request finishes long before a 12-sentence one queued first."""
    scheduler = SentenceScheduler(tts, max_batch=2, window_s=0.0)
    try:
        long = scheduler.submit(tts.plan(["hello there. good morning."] * 1, [voice], [0]) * 6)
        short = scheduler.submit(tts.plan(["how are you?"], [voice], [5]))
        w = short.futures[0].result(timeout=120)
        assert sum(f.done() for f in long.futures) <= 4  # at most two batches ran before it
        assert np.allclose(w.numpy(), _alone(tts, voice, "how are you?", 5))
        [f.result(timeout=300) for f in long.futures]
        assert max(scheduler.batch_sizes) == 2
    finally:
        scheduler.close()


def test_cancelled_tickets_are_dropped(tts, voice):
    scheduler = SentenceScheduler(tts, max_batch=1, window_s=0.0)
    try:
        first = scheduler.submit(tts.plan(["hello there."], [voice], [0]))
        gone = scheduler.submit(tts.plan(["good morning. how are you? fine."], [voice], [0]))
        gone.cancel()
        first.futures[0].result(timeout=60)
        time.sleep(0.5)
        assert scheduler.batch_sizes == [1] and scheduler.pending == 0
        assert all(f.cancelled() for f in gone.futures)
    finally:
        scheduler.close()


# ---- a real server on 127.0.0.1 -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tts, voice, tmp_path_factory):
    app = create_app(
        tts,
        _voices_dir(tmp_path_factory.mktemp("live"), voice),
        ServerSettings(batch_window_ms=300, body_timeout_s=1.0),
    )
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield sock.getsockname()[1], app
    server.should_exit = True
    thread.join(timeout=10)
    app.state.scheduler.close()


def _post(port, body, timeout=120):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/audio/speech", data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _raw(port, data, wait=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        return s.recv(4096)


def test_concurrent_requests_share_batches_yet_match_single_requests(live, tts, voice):
    port, app = live
    reqs = [("hello there.", 3), ("good morning to you all!", 4), ("how are you today? fine.", 5)]
    results = {}

    def call(k):
        results[k] = _post(port, _speech(*reqs[k]))

    app.state.scheduler.batch_sizes.clear()
    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(reqs))]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert max(app.state.scheduler.batch_sizes) > 1  # they really shared a batch
    for k, (text, seed) in enumerate(reqs):
        status, body = results[k]
        assert status == 200
        audio = sf.read(io.BytesIO(body))[0]
        alone = _alone(tts, voice, text, seed)
        assert len(audio) == len(alone) and np.abs(audio - alone).max() < 1e-4


def test_streamed_audio_arrives_by_chunk_and_equals_the_python_stream(live, tts, voice):
    """Issue 15: a streamed response is what TTS.stream makes for that text, voice and seed (chunk-causal
    audio, sent piece by piece), in every streaming format."""
    port, _ = live
    text = "hello there. good morning to you. how are you today?"
    chunks = list(tts.stream(text, voice, seed=7))
    assert len(chunks) > 3  # more pieces than sentences
    whole = pcm16(torch.cat([c.audio for c in chunks]))
    for extra in ({"stream": True}, {"stream_format": "audio"}):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/audio/speech",
            data=json.dumps(_speech(text, 7, response_format="wav", **extra)).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.headers["Transfer-Encoding"] == "chunked"
            streamed = r.read()
        assert streamed[:44] == streaming_wav_header(24000) and streamed[44:] == whole
    status, sse = _post(port, _speech(text, 7, stream_format="sse"))
    events = [json.loads(line[6:]) for line in sse.decode().splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta"] * (len(events) - 1) + ["speech.audio.done"]
    assert len(events) > 4
    import base64

    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == whole


def test_concurrent_streams_share_batches_yet_each_equals_its_own_stream(live, tts, voice):
    """Issue 15: streaming requests that arrive together stream as one batch (one LM batch, one VAE call
    per step), and each client gets what TTS.stream makes for its text alone (to 16-bit rounding)."""
    port, app = live
    reqs = [("hello there. good morning.", 11), ("how are you today?", 12), ("good day to you, friends.", 13)]
    results = {}

    def call(k):
        results[k] = _post(port, _speech(*reqs[k], stream=True, response_format="pcm"))

    app.state.scheduler.batch_sizes.clear()
    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(reqs))]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert max(app.state.scheduler.batch_sizes) > 1  # they really streamed together
    for k, (text, seed) in enumerate(reqs):
        status, body = results[k]
        alone = np.frombuffer(pcm16(torch.cat([c.audio for c in tts.stream(text, voice, seed=seed)])), "<i2")
        got = np.frombuffer(body, "<i2")
        assert status == 200 and len(got) == len(alone)
        assert np.abs(got.astype(int) - alone.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "data, status",
    [
        (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"400"),
        (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b'POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"in', b"408"),
    ],
)
def test_lying_and_partial_bodies_are_refused(live, data, status):
    t0 = time.monotonic()
    assert _raw(live[0], data).split(b" ")[1] == status
    assert time.monotonic() - t0 < 4  # the body deadline is 1 s: nobody waits forever


def test_a_trickled_body_times_out(live):
    with socket.create_connection(("127.0.0.1", live[0]), timeout=10) as s:
        s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        t0 = time.monotonic()
        reply = b""
        for _ in range(8):  # one byte per 0.4 s would take 20 s
            try:
                s.sendall(b"{")
            except OSError:
                break
            s.settimeout(0.4)
            try:
                reply += s.recv(4096)
                break
            except TimeoutError:
                continue
        assert reply.split(b" ")[1] == b"408" and time.monotonic() - t0 < 3


def test_a_client_that_disconnects_frees_its_sentences(live, voice):
    port, app = live
    scheduler = app.state.scheduler
    text = " ".join(["hello there. good morning to you."] * 100)  # 200 sentences, ~2.5 s of work here
    body = json.dumps(_speech(text)).encode()
    head = f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    before = len(scheduler.batch_sizes)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode() + body)
        time.sleep(0.3)  # queued and started
    time.sleep(1.5)  # the server notices within its 0.25 s poll; what has not started is dropped
    ran = sum(scheduler.batch_sizes[before:])
    assert scheduler.pending == 0 and ran < 200
    time.sleep(0.5)
    assert sum(scheduler.batch_sizes[before:]) == ran  # nothing of it runs any more
    status, _ = _post(port, _speech("hello there."))
    assert status == 200  # the worker is free for the next request


def test_a_streaming_client_that_disconnects_stops_its_stream(live):
    """Issue 15: closing a streamed response cancels the request: the worker stops streaming it and takes
    the next request."""
    port, app = live
    scheduler = app.state.scheduler
    text = " ".join(["hello there. good morning to you."] * 100)  # 200 sentences
    body = json.dumps(_speech(text, stream=True, response_format="pcm")).encode()
    head = f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    before = len(scheduler.batch_sizes)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode() + body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")  # streaming has begun
    time.sleep(1.5)  # the next write to the closed socket fails; the ticket is cancelled
    ran = len(scheduler.batch_sizes) - before
    assert scheduler.pending == 0 and ran < 200
    time.sleep(0.5)
    assert len(scheduler.batch_sizes) - before == ran  # nothing of it runs any more
    status, _ = _post(port, _speech("hello there."))
    assert status == 200


def test_cli_refuses_a_busy_port_and_a_missing_voices_folder(tmp_path, capsys):
    busy = bind("127.0.0.1", 0)
    port = busy.getsockname()[1]
    try:
        (tmp_path / "voices").mkdir()
        code = main(
            [
                "serve",
                "--bundle",
                str(tmp_path / "nope"),
                "--voices",
                str(tmp_path / "voices"),
                "--port",
                str(port),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1
    finally:
        busy.close()
    code = main(["serve", "--bundle", "b", "--voices", str(tmp_path / "missing")])
    assert code == 2 and "--voices folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--bundle", "b", "--voices", "v", "--port", "70000"])
    assert e.value.code == 2 and "out of range" in capsys.readouterr().err


def test_serve_computes_on_its_calling_thread_and_stops_when_the_scheduler_closes(
    tts, voice, tmp_path, monkeypatch
):
    """`mmspeech serve` does all model work (sentences, new voices) on the thread that called serve() and
    loaded the models, uvicorn answering from another (libgomp runs a second computing thread up to 3x
    slower on a CPU: see SentenceScheduler); closing the scheduler stops both."""
    import httpx
    from mmspeech_pipeline.serve import serve

    workers = set()
    for name in ("synthesize_sentences", "make_voice"):
        real = getattr(tts, name)
        monkeypatch.setattr(
            tts, name, lambda *a, _real=real, **k: workers.add(threading.current_thread()) or _real(*a, **k)
        )
    app = create_app(tts, _voices_dir(tmp_path, voice), ServerSettings(), worker_thread=False)
    assert not app.state.scheduler.has_thread
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    runner = threading.Thread(target=serve, args=(app, sock, "warning"))
    runner.start()
    try:
        for _ in range(100):
            try:
                httpx.get(url + "/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        r = httpx.post(url + "/v1/audio/speech", json=_speech("hello there."), timeout=60)
        assert r.status_code == 200 and len(r.content) > 44
        wav = io.BytesIO()
        x, sr = sf.read(str(REF))
        sf.write(wav, x, sr, format="WAV")
        up = httpx.post(
            url + "/v1/voices", files={"file": ("me.wav", wav.getvalue())}, data={"name": "x"}, timeout=60
        )
        assert up.status_code == 201
    finally:
        app.state.scheduler.close()
        runner.join(timeout=30)
    assert not runner.is_alive() and workers == {runner}


def test_warm_up_runs_the_request_paths_and_leaves_later_audio_unchanged(tts, voice, monkeypatch):
    from mmspeech_pipeline.serve import warm_up

    text = "the same words, before and after."
    whole = _alone(tts, voice, text, 5)
    streamed = torch.cat([c.audio for c in tts.stream(text, voice, seed=5)])
    calls = []
    for name in ("stream_sentences", "synthesize_sentences"):
        real = getattr(tts, name)
        monkeypatch.setattr(tts, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))
    assert warm_up(tts, voice, rounds=2) > 0
    assert calls == ["stream_sentences", "synthesize_sentences"] * 2
    monkeypatch.undo()
    assert np.array_equal(_alone(tts, voice, text, 5), whole)
    assert torch.equal(torch.cat([c.audio for c in tts.stream(text, voice, seed=5)]), streamed)
    with pytest.raises(ValueError, match="rounds"):
        warm_up(tts, voice, rounds=-1)


def test_cli_serve_warms_up_before_it_serves(tmp_path, make_parts, voice, monkeypatch, capsys):
    import mmspeech_pipeline.serve as server

    bundle = write_bundle(tmp_path / "b", **make_parts(tmp_path))
    voices = _voices_dir(tmp_path, voice)
    order = []
    monkeypatch.setattr(server, "serve", lambda app, sock: order.append("serve") or sock.close())
    real = server.warm_up
    monkeypatch.setattr(server, "warm_up", lambda *a: order.append(("warm_up", a[2])) or real(*a))
    args = ["serve", "--bundle", str(bundle), "--voices", str(voices), "--port", "0"]
    assert main([*args, "--warmup", "1"]) == 0
    assert order == [("warm_up", 1), "serve"] and "warmed up with voice 'alice'" in capsys.readouterr().out
    assert main([*args, "--warmup", "0"]) == 0
    assert order[2:] == ["serve"] and "warmed up" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main([*args, "--warmup", "-1"])
    assert e.value.code == 2 and "must be 0 or more" in capsys.readouterr().err


IDLE_WORKER_ON_SIGTERM = """
import os, signal, threading
from mmspeech_pipeline.scheduler import SentenceScheduler

def interrupt(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, interrupt)
bystander = threading.Thread(target=threading.Event().wait, daemon=True)  # takes the signal
bystander.start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # blocked here only: the kernel picks bystander
scheduler = SentenceScheduler(None, thread=False)  # idle: no tickets, so the model is never touched
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
    scheduler.run()
except KeyboardInterrupt:
    print("interrupted")
"""


def test_an_idle_worker_on_the_main_thread_sees_a_sigterm_that_another_thread_took():
    """`mmspeech serve` idles in the scheduler's wait on its main thread. The kernel may hand a SIGTERM to
    any thread; Python then runs the handler on the main thread only when that thread next runs Python
    code. An untimed wait never did (the server ignored SIGTERM on GPU machines): the wait is timed."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", IDLE_WORKER_ON_SIGTERM], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "interrupted", done.stderr


def test_streaming_header_is_a_valid_wav_start():
    x = torch.linspace(-0.5, 0.5, 2400)
    data = streaming_wav_header(24000) + (x * 32767).round().numpy().astype("<i2").tobytes()
    y, sr = sf.read(io.BytesIO(data))  # libsndfile accepts the "unknown size" header
    assert sr == 24000 and len(y) == 2400
