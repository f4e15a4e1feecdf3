"""Beta-conditioned PatchGAN discriminator (design §3.11, the released "patchgan" model).

The 8-channel beta condition is tiled over the image and concatenated after RGB (11 input channels)::

    [x, c] ─C64/s2─LReLU─C128/s2─LReLU─C256/s2─LReLU─C512/s1─LReLU─C1/s1─> logits (N, 1, H/8−2, W/8−2)
"""

from __future__ import annotations

import torch
from taming.modules.discriminator.model import weights_init
from torch import Tensor, nn

from .conditioning import PAPER_BETA_RANGE, BetaConditionMLP, BetaLike, BetaRange


class BetaConditionedPatchGAN(nn.Module):
    def __init__(
        self,
        in_ch: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        cond_ch: int = 8,
        fourier_freqs: int = 10,
        beta_rate_max: float = PAPER_BETA_RANGE.rate_max,
        beta_vq_max: float = PAPER_BETA_RANGE.vq_max,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch + cond_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1),
                nn.Identity(),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.main.apply(weights_init)  # conv weights ~ N(0, 0.02), biases keep the PyTorch default
        self.mlp = BetaConditionMLP(cond_ch, fourier_freqs, BetaRange(float(beta_rate_max), float(beta_vq_max)))

    def forward(self, x: Tensor, beta_rate: BetaLike, beta_vq: BetaLike) -> Tensor:
        cond = self.mlp.condition(beta_rate, beta_vq).to(x.dtype)  # (N or 1, cond_ch)
        cond = cond[:, :, None, None].expand(x.shape[0], -1, *x.shape[2:])
        return self.main(torch.cat([x, cond], dim=1))
