import pytest
import torch
from mmspeech_pipeline.bundle import write_bundle
from mmspeech_pipeline.tts import TTS
from mmspeech_tokenizer.infer import sample_wavs

pytestmark = pytest.mark.gpu


def test_tts_on_cuda(tmp_path, make_parts):
    b = write_bundle(tmp_path / "b", **make_parts(tmp_path))
    tts = TTS.from_pretrained(b, device="cuda")
    voice = tts.make_voice(sample_wavs()[0], reference_text="hello there")
    wav = tts.synthesize("good morning. how are you today?", voice=voice, seed=0)
    assert wav.sample_rate == 24000 and torch.isfinite(wav.audio).all()
    chunks = list(tts.stream("hello there, this is a test.", voice, seed=0, chunk_tokens=4))
    assert chunks[-1].final
