import torch
from torch import nn

from edgediff.reference.canvas32.model import build_denoiser, build_scheduler
from edgediff.reference.canvas32.sampling import cfg_ddim_sample, guided
from edgediff.sampling import ddim_sample

from .tiny import TINY_UNET


def test_guidance_formula():
    v_null, v_cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(guided(v_cond, v_null, 2.0), torch.tensor([5.0, 2.0]))
    assert torch.equal(guided(v_cond, v_null, 1.0), v_cond)
    assert torch.equal(guided(v_cond, v_null, 0.0), v_null)


class _Conditioned(nn.Module):
    """The UNet with a fixed context, callable as `unet(x, t)` for the unconditioned sampler."""

    def __init__(self, unet, context):
        super().__init__()
        self.unet, self.context = unet, context

    def forward(self, x, t):
        return self.unet(x, t, encoder_hidden_states=self.context)


def test_guidance_one_is_the_conditional_ddim_sampler():
    denoiser = build_denoiser(0, TINY_UNET).eval()
    table = denoiser.table()
    labels = torch.tensor([[7, 2], [10, 4], [1, 10]])
    noise = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    config = dict(build_scheduler().config)
    ours = cfg_ddim_sample(denoiser.unet, table, config, noise, labels, 4, guidance=1.0)
    with torch.no_grad():
        ref = ddim_sample(_Conditioned(denoiser.unet, table.encode(labels)), config, noise, 4).images
    assert torch.allclose(ours, ref, atol=1e-5)
    # With guidance the null branch matters: the result changes.
    assert not torch.allclose(cfg_ddim_sample(denoiser.unet, table, config, noise, labels, 4, 3.0), ours)
