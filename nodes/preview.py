"""Latent previews for the sampler progress bar: a linear latent -> RGB map, fitted per run by
least squares on a few small synthetic frames encoded with the model's own VAE (so it works
for any channel count without published factors). Built only when the host shows previews."""
from __future__ import annotations

import numpy as np
import torch

from ..vidinv import families, synthetic
from . import host


def fit_rgb_factors(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [C, 3], b [3]) with rgb ~ z @ W + b at latent resolution."""
    fam = families.of(model)
    m, temporal = model.size_multiple, model.temporal_factor
    size = max(4 * m, 64)
    frames = 5  # the synthetic renderer draws 4k+1 frames; 2 latent frames for CogVideoX's 4x temporal VAE
    zs, rgbs = [], []
    for seed in range(4):
        spec = synthetic.random_spec(seed, frames, size, size, colour=list(synthetic.COLOURS)[seed])
        clip = torch.from_numpy(synthetic.render(spec))
        z = fam.encode_video(model, clip)[0]  # [F, C, h, w]
        f, c, h, w = z.shape
        small = torch.nn.functional.adaptive_avg_pool2d(clip.permute(0, 3, 1, 2), (h, w))  # [N, 3, h, w]
        small = small[::temporal][:f]
        zs.append(z.permute(0, 2, 3, 1).reshape(-1, c))
        rgbs.append(small.permute(0, 2, 3, 1).reshape(-1, 3))
    z, rgb = torch.cat(zs), torch.cat(rgbs)
    a = torch.cat([z, torch.ones(z.shape[0], 1)], dim=1).double()
    sol = torch.linalg.lstsq(a, rgb.double()).solution.float()
    return sol[:-1], sol[-1]


def latent_preview(model):
    """A callable ``denoised latent -> PIL image`` of the middle frame, or None."""
    if not host.previews_enabled():
        return None
    from PIL import Image
    weight, bias = fit_rgb_factors(model)

    def preview(latent: torch.Tensor):
        z = latent[0, latent.shape[1] // 2].float().cpu()  # [C, h, w]
        rgb = (z.permute(1, 2, 0) @ weight + bias).clamp(0, 1)
        return Image.fromarray((rgb.numpy() * 255).astype(np.uint8)).resize(
            (z.shape[2] * 8, z.shape[1] * 8), Image.NEAREST)

    return preview
