"""The Gradio page: its action called directly, and the whole page in a real headless chromium."""

import shutil
import socket

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
from mmspeech_pipeline.bundle import write_bundle
from mmspeech_pipeline.demo import MAX_CHARS, ONE_SHOT, ZERO_SHOT, launch, speak
from mmspeech_pipeline.tts import TTS
from mmspeech_tokenizer.infer import sample_wavs

REF = str(sample_wavs()[0])
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tts(tmp_path_factory, make_parts):
    tmp = tmp_path_factory.mktemp("demo")
    return TTS.from_pretrained(write_bundle(tmp / "b", **make_parts(tmp)), device="cpu")


def test_speak_returns_what_the_python_api_makes(tts):
    sr, pcm = speak(tts, REF, "", "hello there.", 3, ZERO_SHOT)
    ref = tts.synthesize("hello there.", REF, seed=3).unbatch()[0].numpy()
    assert sr == 24000 and pcm.dtype == np.int16 and len(pcm) == len(ref)
    assert np.abs(pcm / 32767 - ref).max() < 1e-4
    sr, one = speak(tts, REF, "hi", "hello there.", 3, ONE_SHOT)
    assert len(one) == len(tts.synthesize("hello there.", REF, "hi", seed=3).unbatch()[0])


@pytest.mark.parametrize(
    "reference, transcript, text, mode, msg",
    [
        (None, "", "hello", ZERO_SHOT, "Upload or record a reference"),
        (REF, "", "  ", ZERO_SHOT, "Type the text"),
        (REF, "", "x" * (MAX_CHARS + 1), ZERO_SHOT, "at most"),
        (REF, "", "hello", ONE_SHOT, "needs the reference's transcript"),
        (REF, "", "hi\x00", ZERO_SHOT, "unsupported characters"),
        ("SILENT", "", "hello", ZERO_SHOT, "silent"),
        ("SHORT", "", "hello", ZERO_SHOT, "at least 1.0 s"),
    ],
)
def test_problems_are_readable_messages_not_tracebacks(tts, tmp_path, reference, transcript, text, mode, msg):
    if reference in ("SILENT", "SHORT"):
        path = tmp_path / "ref.wav"
        sf.write(path, np.zeros(48000) if reference == "SILENT" else np.random.randn(2400) * 0.1, 24000)
        reference = str(path)
    with pytest.raises(gr.Error, match=msg) as e:
        speak(tts, reference, transcript, text, 0, mode)
    assert str(tmp_path) not in str(e.value)  # the server's paths are not shown to the person


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it"
)
def test_the_page_in_a_real_browser(tts, tmp_path):
    """Load the page, upload a reference, type, press Speak, wait for audio in the player; screenshot."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    page_app = launch(tts, port=port, block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle")
            page.locator("#reference input[type=file]").set_input_files(REF)
            page.wait_for_selector("#reference audio[src]", state="attached", timeout=30_000)
            page.locator("#text textarea").fill("Hello there. How are you?")
            page.click("#speak")
            player = page.wait_for_selector("#result audio[src]", state="attached", timeout=120_000)
            page.wait_for_function("el => el.duration > 0", arg=player, timeout=30_000)
            seconds = player.evaluate("el => el.duration")
            expected = tts.synthesize("Hello there. How are you?", REF, seed=0).audio.shape[-1] / 24000
            assert abs(seconds - expected) < 0.05
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            # a person's mistake is a message on the page
            page.locator("#text textarea").fill("")
            page.click("#speak")
            toast = page.wait_for_selector(".toast-body", timeout=30_000)
            assert "Type the text to speak" in toast.inner_text()
            browser.close()
        assert (tmp_path / "demo.png").stat().st_size > 10_000
    finally:
        page_app.close()
