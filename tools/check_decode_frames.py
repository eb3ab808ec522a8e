"""Per-frame reconstruction of even latent counts on the trained bundled VAE: the pack's decode
(`cogvideox.decodable`: repeat the last latent, cut its frames) against the two ways of cutting
diffusers' 4k+4 frames back to 4k+1 (drop the first 3, or the last 3).

    python -m tools.check_decode_frames [frames ...]
"""
from __future__ import annotations

import sys

import torch

from vidinv import synthetic
from vidinv.models import cogvideox


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-12)))


def main(counts: list[int]) -> None:
    torch.set_num_threads(1)
    model = cogvideox.load("assets/tiny-cogvideox")
    for n in counts:
        rows = {"pack": [], "diffusers, first 3 cut": [], "diffusers, last 3 cut": []}
        for spec in synthetic.heldout_specs(4, frames=n):
            clip = torch.from_numpy(synthetic.render(spec)).float()
            z = cogvideox.encode_video(model, clip, "off")
            ours = cogvideox.decode_video(model, z, "off")
            with torch.no_grad():
                full = model.vae.decode(cogvideox.unscale_latents(model, z).permute(0, 2, 1, 3, 4)).sample
            full = ((full[0].float() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)
            rows["pack"].append([psnr(ours[i], clip[i]) for i in range(n)])
            rows["diffusers, first 3 cut"].append([psnr(full[full.shape[0] - n:][i], clip[i]) for i in range(n)])
            rows["diffusers, last 3 cut"].append([psnr(full[:n][i], clip[i]) for i in range(n)])
        print(f"{n} frames -> {z.shape[1]} latents; diffusers decodes {full.shape[0]} frames")
        for name, r in rows.items():
            per = torch.tensor(r).mean(0)
            print(f"  {name:24s} mean {per.mean():6.2f} dB  first {per[0]:6.2f}  last 4 {per[-4:].mean():6.2f}  "
                  f"min {per.min():6.2f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [5, 13, 21])
