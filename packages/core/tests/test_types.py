import pytest
import torch
from mmspeech_core import Latents, SpeakerEmbedding, SpeechTokens, Waveform, lengths_to_mask


def test_speech_tokens_from_list_pads_and_unbatches():
    t = SpeechTokens.from_list([torch.tensor([1, 2, 3]), torch.tensor([4])], vocab_size=10)
    assert t.tokens.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert t.lengths.tolist() == [3, 1]
    assert t.mask().tolist() == [[True, True, True], [True, False, False]]
    assert [x.tolist() for x in t.unbatch()] == [[1, 2, 3], [4]]
    assert t.durations().tolist() == pytest.approx([0.12, 0.04])


def test_select_trims_to_longest_selected():
    t = SpeechTokens.from_list([torch.arange(5), torch.arange(2), torch.arange(3)])
    s = t.select([1, 2])
    assert s.tokens.shape == (2, 3) and s.lengths.tolist() == [2, 3]


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(tokens=torch.zeros(3, dtype=torch.long), lengths=torch.tensor([3])), r"\(B, T\)"),
        (dict(tokens=torch.zeros(1, 3), lengths=torch.tensor([3])), "integer"),
        (dict(tokens=torch.zeros(1, 3, dtype=torch.long), lengths=torch.tensor([4])), r"\[0, 3\]"),
        (dict(tokens=torch.zeros(2, 3, dtype=torch.long), lengths=torch.tensor([3])), r"shape \(2,\)"),
        (dict(tokens=torch.zeros(1, 3, dtype=torch.long), lengths=torch.tensor([3.0])), "integer"),
        (dict(tokens=torch.full((1, 3), 9), lengths=torch.tensor([3]), vocab_size=9), r"\[0, 9\)"),
        (
            dict(tokens=torch.zeros(1, 3, dtype=torch.long), lengths=torch.tensor([3]), frame_rate=0),
            "frame_rate",
        ),
    ],
)
def test_speech_tokens_rejects_bad_input(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        SpeechTokens(**kwargs)


def test_vocab_check_ignores_padding():
    # a pad value outside the vocabulary is fine: only valid frames are checked
    SpeechTokens(tokens=torch.tensor([[1, -1]]), lengths=torch.tensor([1]), vocab_size=4)


def test_latents_validation_and_mask():
    lat = Latents.from_list([torch.ones(4, 5), torch.ones(4, 2)], frame_rate=50)
    assert lat.data.shape == (2, 4, 5) and lat.channels == 4
    assert lat.masked().data[1, :, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        Latents(data=torch.ones(2, 5), lengths=torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="floating"):
        Latents(data=torch.ones(1, 2, 5, dtype=torch.long), lengths=torch.tensor([5]))
    with pytest.raises(ValueError, match="leading shape"):
        Latents.from_list([torch.ones(4, 5), torch.ones(3, 5)])


def test_waveform_rejects_stereo_and_bad_rate():
    with pytest.raises(ValueError, match="mono"):
        Waveform(audio=torch.zeros(1, 2, 100), lengths=torch.tensor([100]))
    with pytest.raises(ValueError, match="sample_rate"):
        Waveform(audio=torch.zeros(1, 100), lengths=torch.tensor([100]), sample_rate=0)
    with pytest.raises(ValueError, match="1-D"):
        Waveform.from_list([torch.zeros(2, 100)], 16000)
    with pytest.raises(TypeError):
        Waveform(audio=[0.0], lengths=torch.tensor([1]))  # type: ignore[arg-type]


def test_waveform_resample_scales_lengths():
    w = Waveform.from_list([torch.randn(16000), torch.randn(8000)], 16000).resample(24000)
    assert w.sample_rate == 24000 and w.lengths.tolist() == [24000, 12000]


def test_speaker_embedding_validation():
    assert SpeakerEmbedding(torch.zeros(2, 8)).dim == 8
    with pytest.raises(ValueError):
        SpeakerEmbedding(torch.zeros(8))


def test_lengths_to_mask():
    assert lengths_to_mask(torch.tensor([0, 2]), 3).tolist() == [[False] * 3, [True, True, False]]
