import pytest
import torch
from mmspeech_core import Latents, SpeechTokens, Waveform
from mmspeech_core.nn import LogMel, SpeakerEncoder

pytestmark = pytest.mark.gpu


def test_containers_move_and_speaker_encoder_masks_on_cuda():
    t = SpeechTokens.from_list([torch.tensor([1, 2, 3]), torch.tensor([4])]).to("cuda")
    assert t.tokens.device.type == "cuda" and t.mask().device.type == "cuda"
    lat = Latents.from_list([torch.randn(4, 5)]).to("cuda")
    assert lat.masked().data.device.type == "cuda"
    torch.manual_seed(0)
    enc, mel = SpeakerEncoder(80, 64, 2, 4, 32).cuda().eval(), LogMel().cuda()
    w = Waveform.from_list([torch.randn(24000), torch.randn(9000)], 24000).to("cuda")
    m = mel(w.audio)
    both = enc(m, mel.frames(w.lengths))
    alone = enc(mel(w.audio[1:, :9000]), mel.frames(w.lengths[1:]))
    assert torch.allclose(both[1], alone[0], atol=1e-4)


def test_a_container_moved_back_to_the_host_is_readable_at_once():
    """Device -> host copies are synchronous: an asynchronous one returns before its bytes have landed, and
    audio read at once was another item's (seen on an H200 in benchmarks/vae_gan.py). Large items and a busy
    stream make a late copy likely."""
    torch.manual_seed(0)
    for k in range(4):
        y = torch.randn(8, 8, device="cuda") @ torch.randn(8, 2_000_000, device="cuda")  # queued work first
        wav = Waveform.from_list(list(y + k), 24000).to("cpu")
        assert torch.equal(wav.audio, (y + k).cpu()), f"round {k}"
