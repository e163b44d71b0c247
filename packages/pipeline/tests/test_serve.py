import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from mmspeech_pipeline.bundle import write_bundle
from mmspeech_pipeline.serve import SpeechService, make_server
from mmspeech_pipeline.tts import TTS
from mmspeech_tokenizer.infer import sample_wavs


@pytest.fixture(scope="module")
def server(tmp_path_factory, make_parts):
    tmp = tmp_path_factory.mktemp("serve")
    tts = TTS.from_pretrained(write_bundle(tmp / "b", **make_parts(tmp)), device="cpu")
    (tmp / "voices").mkdir()
    tts.make_voice(sample_wavs()[0]).save(tmp / "voices" / "alice.safetensors")
    service = SpeechService(tts, tmp / "voices", batch_window_ms=300)
    srv = make_server(service, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}", tts, service
    srv.shutdown()
    srv.server_close()


def _post(url, body):
    req = urllib.request.Request(url + "/v1/audio/speech", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_openai_compatible_speech(server):
    url, tts, _ = server
    status, ctype, body = _post(
        url, {"model": "mmspeech", "input": "hello there.", "voice": "alice", "seed": 1}
    )
    assert status == 200 and ctype == "audio/wav"
    audio, sr = sf.read(io.BytesIO(body))
    assert sr == 24000 and len(audio) > 0
    # same request, same seed: the same audio as the Python API
    ref = tts.synthesize("hello there.", voice=tts.make_voice(sample_wavs()[0]), seed=1).unbatch()[0].numpy()
    assert len(audio) == len(ref) and np.abs(audio - ref).max() < 1e-3  # 16-bit rounding
    status, ctype, pcm = _post(
        url,
        {"model": "mmspeech", "input": "hello there.", "voice": "alice", "response_format": "pcm", "seed": 1},
    )
    assert status == 200 and len(pcm) == 2 * len(audio)
    with urllib.request.urlopen(url + "/v1/voices", timeout=10) as r:
        assert json.loads(r.read()) == {"voices": ["alice"]}


@pytest.mark.parametrize(
    "body, msg",
    [
        ({"input": "", "voice": "alice"}, "non-empty"),
        ({"input": "hi", "voice": "bob"}, "unknown voice"),
        ({"input": "hi", "voice": "alice", "response_format": "mp3"}, "not supported"),
        ({"input": "hi", "voice": "alice", "speed": 1.5}, "speed"),
        ({"input": "hi", "voice": "alice", "speed": "fast"}, "'speed' must be a number"),  # review item 13
        ({"input": "hi", "voice": "alice", "speed": None}, "'speed' must be a number"),
        ({"input": "hi", "voice": ["alice"]}, "unknown voice"),
        ({"input": "hi", "voice": "alice", "response_format": ["wav"]}, "response_format"),
        ({"input": "hi", "voice": "alice", "seed": 2**64}, "'seed' must be an integer"),
        ({"input": "hi", "voice": "alice", "seed": True}, "'seed' must be an integer"),
        ({"input": "hi\x00", "voice": "alice"}, "unsupported characters"),
    ],
)
def test_bad_requests_get_400_with_a_message(server, body, msg):
    status, ctype, raw = _post(server[0], body)
    assert status == 400 and ctype == "application/json"
    assert msg in json.loads(raw)["error"]["message"]


def test_concurrent_requests_are_batched_and_batch_invariant(server):
    url, tts, service = server
    voice = tts.make_voice(sample_wavs()[0])
    reqs = [("hello there.", 3), ("good morning to you all!", 4), ("how are you today? fine.", 5)]
    results: dict[int, bytes] = {}

    def call(k):
        text, seed = reqs[k]
        status, _, body = _post(url, {"input": text, "voice": "alice", "seed": seed})
        assert status == 200
        results[k] = body

    service.batch_sizes.clear()
    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert max(service.batch_sizes) > 1  # they really shared a batch
    for k, (text, seed) in enumerate(reqs):
        audio, _ = sf.read(io.BytesIO(results[k]))
        alone = tts.synthesize(text, voice=voice, seed=seed).unbatch()[0].numpy()
        assert len(audio) == len(alone) and np.abs(audio - alone).max() < 1e-3
