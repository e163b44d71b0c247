import pytest
import torch
from mmspeech_core import Waveform
from mmspeech_vae.config import tiny_config
from mmspeech_vae.losses import VAELosses
from mmspeech_vae.model import DACVAE

pytestmark = pytest.mark.gpu


def test_cuda_exact_lengths_and_gan_step():
    torch.manual_seed(0)
    m = DACVAE(tiny_config()).to("cuda")
    wav = Waveform.from_list([torch.randn(24000), torch.randn(5000)], 24000)
    lat = m.encode(wav)
    assert lat.data.device.type == "cuda" and lat.lengths.tolist() == [50, 11]
    assert m.decode(lat).lengths.tolist() == [24000, 11 * 480]
    losses = VAELosses(tiny_config().loss, 24000).to("cuda")
    x = torch.randn(2, 9600, device="cuda") * 0.1
    out = m(x)
    d = losses.discriminator_loss(out["recon"].detach(), x)
    adv, feat = losses.generator_losses(out["recon"], x)
    total = losses.mel_loss(out["recon"], x) + adv + feat + out["kl"]
    total.backward()
    assert torch.isfinite(d) and torch.isfinite(total)
