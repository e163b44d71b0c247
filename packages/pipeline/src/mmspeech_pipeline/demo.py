"""A web page for trying a bundle (the ``[demo]`` extra, Gradio): upload or record a reference, type, listen.

    mmspeech demo --bundle bundle/            # then open http://127.0.0.1:7860

Everything runs locally: the page asks nothing of the internet (system fonts, no analytics, no share link).
Problems with the reference or the text are shown to the person as a message, never as a traceback. The
model work runs on one worker (the thread that loaded the models when the page blocks), not on Gradio's
handler threads: on a CPU a second computing thread runs PyTorch's OpenMP ops up to 3x slower (see
:class:`~mmspeech_pipeline.scheduler.SentenceScheduler`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from mmspeech_llm.text import TextError

from .reference import ReferenceAudioError
from .scheduler import SentenceScheduler
from .tts import TTS

ZERO_SHOT, ONE_SHOT = "zero-shot (voice only)", "one-shot (voice + transcript)"
MAX_CHARS = 1000
# system fonts: the default theme would fetch Inter from Google Fonts, which an offline machine cannot reach
FONTS, MONO_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"], ["ui-monospace", "monospace"]


def speak(
    tts: TTS, reference: str | None, transcript: str, text: str, seed: float | int | None, mode: str
) -> tuple[int, np.ndarray]:
    """The page's action: (sample rate, int16 samples) for the audio player; ``gr.Error`` with a readable
    message for anything the person can fix."""
    if not reference:
        raise gr.Error("Upload or record a reference recording first (1-30 s of one person speaking).")
    if not text or not text.strip():
        raise gr.Error("Type the text to speak.")
    if len(text) > MAX_CHARS:
        raise gr.Error(f"The text has {len(text)} characters; this page takes at most {MAX_CHARS}.")
    one_shot = mode == ONE_SHOT
    if one_shot and not (transcript or "").strip():
        raise gr.Error("One-shot needs the reference's transcript (or switch to zero-shot).")
    try:
        voice = tts.make_voice(reference, transcript.strip() if one_shot else None)
        wav = tts.synthesize(text, voice=voice, seed=int(seed or 0)).unbatch()[0]
    except (ReferenceAudioError, TextError) as e:
        raise gr.Error(f"{e}".replace(str(reference), "the reference")) from e
    pcm = (wav.clamp(-1, 1) * 32767).round().numpy().astype(np.int16)
    return tts.sample_rate, pcm


def build_demo(tts: TTS, worker: SentenceScheduler | None = None) -> gr.Blocks:
    """The page; its action runs on ``worker`` (:meth:`SentenceScheduler.call`) if given, else on the
    handler's thread."""
    with gr.Blocks(title="mmspeech", analytics_enabled=False) as page:
        gr.Markdown(
            "# mmspeech\nZero-shot speech synthesis: give a reference recording, type a text, listen. "
            "With the reference's transcript (one-shot) the voice follows the recording more closely."
        )
        with gr.Row():
            with gr.Column():
                reference = gr.Audio(
                    sources=["upload", "microphone"], type="filepath", label="Reference", elem_id="reference"
                )
                transcript = gr.Textbox(
                    label="Transcript of the reference (one-shot)", lines=2, elem_id="transcript"
                )
                mode = gr.Radio([ZERO_SHOT, ONE_SHOT], value=ZERO_SHOT, label="Mode", elem_id="mode")
            with gr.Column():
                text = gr.Textbox(
                    label="Text to speak", lines=4, value="Hello! This is my new voice.", elem_id="text"
                )
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                button = gr.Button("Speak", variant="primary", elem_id="speak")
                result = gr.Audio(label="Result", type="numpy", interactive=False, elem_id="result")

        def run(*args: Any) -> tuple[int, np.ndarray]:
            if worker is None:
                return speak(tts, *args)
            return worker.call(lambda: speak(tts, *args)).result()  # gr.Error comes through as raised

        button.click(run, [reference, transcript, text, seed, mode], result)
    return page


def launch(
    tts: TTS, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True
) -> gr.Blocks:
    """Serve the page. ``block``: until Ctrl-C, doing the model work on this thread; ``False``: return at
    once with the work on a thread of its own (tests; close with ``.close()``)."""
    worker = SentenceScheduler(tts, thread=not block)
    page = build_demo(tts, worker)
    page.launch(
        server_name=host,
        server_port=port,
        share=share,
        theme=gr.themes.Default(font=FONTS, font_mono=MONO_FONTS),
        prevent_thread_lock=True,
        show_error=True,
    )
    if block:
        try:
            worker.run()
        except KeyboardInterrupt:
            pass
        finally:
            worker.close()
            page.close()
    return page
