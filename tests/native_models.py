"""Tiny ComfyUI-native Wan 2.1 files for the native path's host tests, built with core's own classes
(``comfy.ldm.wan.model.WanModel``, ``comfy.ldm.wan.vae.WanVAE``) and random weights, written where core's
loaders look: ``models/diffusion_models`` (two experts with different weights, so a swapped expert
fails a test) and ``models/vae``. Core detects a Wan 2.1 model from the state dict alone: width 128 (a
multiple of 128, one head), text width 4096, two blocks; the VAE's width 8.

Runs in the host's Python (the one that has ComfyUI), not the tests' own:

    python tests/native_models.py COMFYUI_TREE BASE_DIR
"""
import sys
from pathlib import Path

HIGH, LOW, VAE = "vinv_tiny_wan_t2v_high.safetensors", "vinv_tiny_wan_t2v_low.safetensors", "vinv_tiny_wan_vae.safetensors"
TEXT_WIDTH = 4096


def random_like(state: dict, seed: int, scale: float) -> dict:
    """Seeded normal weights (core's modulation tensors start uninitialised); 1-D norm weights are 1."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.ones_like(v) if v.dim() == 1 and ("norm" in k or "gamma" in k) else
                torch.randn(v.shape, generator=g) * scale).contiguous() for k, v in state.items()}


def write(tree: Path, base: Path) -> None:
    sys.path.insert(0, str(tree))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # core picks its device at import: a CPU-only machine has no CUDA
    import torch
    from safetensors.torch import save_file
    from comfy.ldm.wan.model import WanModel
    from comfy.ldm.wan.vae import WanVAE
    net = WanModel(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=128, ffn_dim=256, freq_dim=256,
                   text_dim=TEXT_WIDTH, out_dim=16, num_heads=1, num_layers=2, operations=torch.nn)
    high = random_like(net.state_dict(), 0, 0.05)
    g = torch.Generator().manual_seed(1)
    low = {k: (v + torch.randn(v.shape, generator=g) * 0.02 if v.dim() > 1 else v).contiguous() for k, v in high.items()}
    models = base / "models" / "diffusion_models"
    models.mkdir(parents=True, exist_ok=True)
    save_file(high, str(models / HIGH))
    save_file(low, str(models / LOW))
    vae = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    (base / "models" / "vae").mkdir(parents=True, exist_ok=True)
    save_file(random_like(vae.state_dict(), 2, 0.1), str(base / "models" / "vae" / VAE))


if __name__ == "__main__":
    write(Path(sys.argv[1]), Path(sys.argv[2]))
