"""Train a tiny Stable Video Diffusion-architecture model on synthetic shape videos (issue 8).

    python tools/train_svd_fixture.py [--stage vae|vae-full|unet|export|all] [--minutes-vae M]
                                      [--minutes-vae-full M] [--minutes-unet M] [--threads 2] [--work DIR] [--out DIR]

Stages, each seeded, cached in --work (default .fixture-work-svd/, git-ignored) and resumable:

  vae     AutoencoderKLTemporalDecoder (SVD's VAE: per-frame encoder, 8x spatial, 4 latent channels,
          temporal decoder) on 9-frame clips cropped around the shape's path (tools/fixturekit.py).
  vae-full
          the same VAE on full frames: its mid blocks attend globally, so crops alone do not carry
          over to the whole frame.
  unet    a frozen, randomly initialised CLIPVisionModelWithProjection (the first-frame latent carries
          the image; the CLIP token only adds a per-video bias), then UNetSpatioTemporalConditionModel
          trained with SVD's EDM objective: log-normal sigma, v-prediction with c_in/c_skip/c_out of
          vidinv/edm.py (unit weight on the network output), first frame conditioning by noise-augmented
          latent concatenation + CLIP embedding, joint conditioning dropout (CFG), EMA.
  export  the diffusers folder (StableVideoDiffusionPipeline.save_pretrained, safetensors, float16)
          with SVD-XT's EulerDiscreteScheduler config, and a MODEL_CARD.md draft if none is there.

SVD has no text, and one still frame does not say where the shape goes. The direction is given
by the motion bucket id (an added time id the pipeline always passes): BUCKETS in
vidinv/fixture.py. fps is fixed at 7 (time id 6).

Budgets are wall-clock: a stage times its first steps, then fixes its step count to fill the
budget and logs it. The step count is written to <work>/<stage>_train.json; pass --vae-steps /
--unet-steps to replay exactly that run (the schedule depends on nothing else).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.fixturekit import (FRAMES, SIZE, folder_mb, load_ema, log, optimise, to_model_space,  # noqa: E402
                              train_seed, vae_batch)
from vidinv import synthetic  # noqa: E402
from vidinv.fixture import BUCKETS, FPS, save_pipeline  # noqa: E402

LATENT = SIZE // 8
DIRECTIONS = list(synthetic.DIRECTIONS)  # left, right, up, down: index ^ 1 is the opposite
EMBED = 32  # CLIP projection = UNet cross-attention width

VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                  block_out_channels=[32, 32, 64, 64], layers_per_block=1, latent_channels=4, sample_size=SIZE)
UNET_CONFIG = dict(
    sample_size=LATENT, in_channels=8, out_channels=4, block_out_channels=[32, 64, 64], layers_per_block=1,
    down_block_types=["CrossAttnDownBlockSpatioTemporal"] * 2 + ["DownBlockSpatioTemporal"],
    up_block_types=["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 2,
    num_attention_heads=[2, 4, 4], cross_attention_dim=EMBED, addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=3 * 32, num_frames=FRAMES)
CLIP_CONFIG = dict(hidden_size=32, intermediate_size=64, projection_dim=EMBED, num_hidden_layers=1,
                   num_attention_heads=2, image_size=224, patch_size=32)  # the pipeline resizes to 224
# scheduler/scheduler_config.json of stabilityai/stable-video-diffusion-img2vid-xt
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
                 sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
                 steps_offset=1)
WARMUP = 50  # steps of linear warm-up; the step count is fixed (calibrated) before it ends
CALIBRATE = (3, 12)  # time steps 3..11 to fix the step count


# ----------------------------------------------------------------------------- shared

def lr_at(base: float, step: int, total: int) -> float:
    """Linear warm-up, then cosine to zero; independent of `total` during the warm-up."""
    if step < WARMUP:
        return base * (step + 1) / WARMUP
    return base * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, total - WARMUP)))


class Budget:
    """Fixes a stage's step count: given (--*-steps), cached (resume), or timed on steps 3..11."""

    def __init__(self, steps: int | None, minutes: float, spent: float = 0.0):
        self.total, self.deadline, self.t0 = steps, minutes * 60 - spent, None

    def tick(self, step: int, start: float) -> None:
        if self.total is not None:
            return
        if step == CALIBRATE[0]:
            self.t0 = time.time()
        elif step == CALIBRATE[1]:
            per = (time.time() - self.t0) / (CALIBRATE[1] - CALIBRATE[0])
            left = self.deadline - (time.time() - start)
            self.total = max(CALIBRATE[1] + 1, step + int(0.97 * left / per))
            log(f"{per:.3f} s/step -> {self.total} steps")

    def done(self, step: int) -> bool:
        return self.total is not None and step >= self.total


def save_state(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def rng_state(rng: np.random.Generator, gen: torch.Generator | None = None) -> dict:
    return {"np": rng.bit_generator.state, "torch": torch.get_rng_state(), "gen": gen.get_state() if gen else None}


def set_rng_state(s: dict, rng: np.random.Generator, gen: torch.Generator | None = None) -> None:
    rng.bit_generator.state = s["np"]
    torch.set_rng_state(s["torch"])
    if gen is not None:
        gen.set_state(s["gen"])


# ----------------------------------------------------------------------------- VAE

def train_vae(args) -> None:
    """Phase 1: the whole VAE from scratch on crops around the shape's path (edges are cheap there)."""
    vae_phase(args, "vae", crop=args.crop, batch=args.vae_batch, lr=args.vae_lr, minutes=args.minutes_vae,
              steps=args.vae_steps, seed=args.seed)


def train_vae_full(args) -> None:
    """Phase 2: the whole VAE on full frames. SVD's VAE has global self-attention in the encoder's
    and the decoder's mid blocks, so a VAE trained on crops only does not carry over to the full
    frame (pilot: 20.4 dB on 32x32 crops, 13.0 dB on the 64x64 frames of the same videos)."""
    vae_phase(args, "vae_full", crop=SIZE, batch=args.vae_full_batch, lr=args.vae_full_lr,
              minutes=args.minutes_vae_full, steps=args.vae_full_steps, seed=args.seed + 10, init="vae")


def vae_phase(args, name: str, crop: int, batch: int, lr: float, minutes: float, steps: int | None, seed: int,
              init: str | None = None) -> None:
    """Train AutoencoderKLTemporalDecoder for one phase; writes <work>/vae and <work>/<name>_train.json."""
    from diffusers import AutoencoderKLTemporalDecoder
    work = Path(args.work)
    if (work / f"{name}_train.json").exists():
        log(f"{name}: cached")
        return
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = (AutoencoderKLTemporalDecoder.from_pretrained(work / init) if init
           else AutoencoderKLTemporalDecoder(**VAE_CONFIG))
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    budget, step, spent, losses = Budget(steps, minutes), 0, 0.0, []
    ckpt = work / f"{name}_state.pt"
    if ckpt.exists():
        s = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        set_rng_state(s["rng"], rng)
        step, spent, losses, budget.total = s["step"], s["spent"], s["losses"], s["total"]
        budget.deadline -= spent
        log(f"{name}: resumed at step {step}/{budget.total}")
    log(f"{name}: VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, {crop}x{crop}, batch {batch}")
    start, saved = time.time(), time.time()
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = lr_at(lr, step, budget.total or 10 ** 9)
        x = vae_batch(rng, batch, crop)  # [B, 3, F, h, w] around the shape's path (crop = SIZE: full frames)
        x = x.permute(0, 2, 1, 3, 4).flatten(0, 1)  # frames as images, as SVD's VAE takes them
        post = vae.encode(x).latent_dist
        z = post.sample()
        z = z + args.latent_noise * z.detach().std() * torch.randn_like(z)  # a forgiving decoder
        err = vae.decode(z, num_frames=FRAMES).sample - x
        weight = 1.0 + 4.0 * (x.amax(dim=1, keepdim=True) > -0.9).float()  # foreground x5
        loss = (weight * (err.abs() + err.pow(2))).mean() + args.kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        budget.tick(step, start)
        if step % args.log_every == 0:
            psnr = 10 * math.log10(4 / max(err.pow(2).mean().item(), 1e-10))
            losses.append((step, round(loss.item(), 5), round(psnr, 2)))
            log(f"{name} step {step} loss {loss.item():.4f} psnr {psnr:.2f} {time.time() - start + spent:.0f}s")
        step += 1
        if time.time() - saved > 60 * args.checkpoint_minutes:
            save_state(ckpt, model=vae.state_dict(), opt=opt.state_dict(), rng=rng_state(rng), step=step,
                       spent=spent + time.time() - start, losses=losses, total=budget.total)
            saved = time.time()
    seconds = spent + time.time() - start
    scale = latent_scaling_factor(vae.eval(), rng)
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(work / "vae")
    json.dump({"seconds": seconds, "steps": step, "batch": batch, "crop": crop, "lr": lr, "kl": args.kl,
               "latent_noise": args.latent_noise, "seed": seed, "scaling_factor": scale, "threads": args.threads,
               "losses": losses}, open(work / f"{name}_train.json", "w"), indent=1)
    ckpt.unlink(missing_ok=True)
    log(f"{name} done: {step} steps in {seconds:.0f}s, scaling_factor {scale:.4f}")


@torch.no_grad()
def latent_scaling_factor(vae, rng: np.random.Generator, count: int = 32) -> float:
    frames = np.stack([synthetic.render(synthetic.random_spec(train_seed(rng), FRAMES, SIZE, SIZE))
                       for _ in range(count)])
    z = vae.encode(to_model_space(frames).permute(0, 2, 1, 3, 4).flatten(0, 1)).latent_dist.mode()
    return float(1.0 / z.std())


# ----------------------------------------------------------------------------- UNet

def make_image_encoder(seed: int):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(seed)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_CONFIG)).eval().requires_grad_(False)
    proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return enc, proc


@torch.no_grad()
def clip_embeds(enc, proc, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> [B, D], prepared as the pipeline (and vidinv.models.svd.clip_pixels) does."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
    x = (_resize_with_antialiasing(images * 2 - 1, (224, 224)) + 1) / 2
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    return enc(pixel_values=(x - mean) / std).image_embeds


@torch.no_grad()
def encode_dataset(vae, enc, proc, rng: np.random.Generator, count: int, batch: int = 16) -> dict:
    """Per-frame latents (mode x scaling factor) [N, F, 4, h, w], first and last frames [N, 2, 3, H, W]
    (0..1, float16), their CLIP embeddings [N, 2, D] and the direction index. The last frame and the
    time-reversed latents make a second, equally distributed video (opposite direction) for free:
    SVD's encoder works frame by frame."""
    out = {"latents": [], "ends": [], "embeds": [], "direction": []}
    for start in range(0, count, batch):
        specs = [synthetic.random_spec(train_seed(rng), FRAMES, SIZE, SIZE) for _ in range(min(batch, count - start))]
        frames = torch.from_numpy(np.stack([synthetic.render(s) for s in specs])).permute(0, 1, 4, 2, 3)  # B F 3 H W
        z = vae.encode(frames.flatten(0, 1) * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        ends = frames[:, [0, -1]]
        out["latents"].append(z.view(len(specs), FRAMES, *z.shape[1:]))
        out["ends"].append(ends.half())
        out["embeds"].append(clip_embeds(enc, proc, ends.flatten(0, 1)).view(len(specs), 2, -1))
        out["direction"].append(torch.tensor([DIRECTIONS.index(s.direction) for s in specs]))
        if start % (batch * 50) == 0:
            log(f"encoded {start + len(specs)}/{count}")
    return {k: torch.cat(v) for k, v in out.items()}


def unet_batch(data: dict, vae, gen: torch.Generator, args):
    """One EDM training batch: (UNet input, model time, CLIP tokens, added time ids, v target)."""
    b = args.unet_batch
    idx = torch.randint(0, len(data["latents"]), (b,), generator=gen)
    rev = torch.randint(0, 2, (b,), generator=gen)
    x0 = data["latents"][idx]
    x0 = torch.where(rev.view(-1, 1, 1, 1, 1).bool(), x0.flip(1), x0)
    first = data["ends"][idx, rev].float()
    embeds = data["embeds"][idx, rev].unsqueeze(1)
    direction = data["direction"][idx] ^ rev  # reversed video: the opposite direction
    bucket = torch.tensor([float(BUCKETS[DIRECTIONS[d]]) for d in direction])
    # conditioning frame: noise-augmented in pixels, then the VAE's mode (unscaled), as the pipeline
    aug = torch.exp(args.aug_mean + args.aug_std * torch.randn(b, generator=gen))
    noisy = first * 2 - 1 + aug.view(-1, 1, 1, 1) * torch.randn(first.shape, generator=gen)
    with torch.no_grad():
        image = vae.encode(noisy).latent_dist.mode()
    keep = (torch.rand(b, generator=gen) >= args.cond_dropout).float()  # dropped: zeros, CFG's uncond row
    image, embeds = image * keep.view(-1, 1, 1, 1), embeds * keep.view(-1, 1, 1)
    ids = torch.stack([torch.full((b,), FPS - 1.0), bucket, aug], dim=1)
    # EDM (sigma_data 1), SVD's v-prediction: D = c_skip x + c_out F, loss weight x c_out^2 = 1
    sigma = torch.exp(args.p_mean + args.p_std * torch.randn(b, generator=gen)).view(-1, 1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=gen)
    x = x0 + sigma * noise
    c_in = 1 / (sigma ** 2 + 1).sqrt()
    target = (noise - sigma * x0) * c_in  # = (x0 - c_skip x) / c_out
    inp = torch.cat([x * c_in, image.unsqueeze(1).expand(-1, FRAMES, -1, -1, -1)], dim=2)
    return inp, 0.25 * sigma.flatten().log(), embeds, ids, target


def train_unet(args) -> None:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    work = Path(args.work)
    if (work / "unet_train.json").exists():
        log("unet: cached")
        return
    start = time.time()
    torch.manual_seed(args.seed + 1)
    rng = np.random.default_rng(args.seed + 1)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(work / "vae").eval().requires_grad_(False)
    enc, proc = make_image_encoder(args.seed + 2)
    if not (work / "image_encoder").exists():
        enc.save_pretrained(work / "image_encoder")
        proc.save_pretrained(work / "feature_extractor")
    data_file = work / "dataset.pt"
    if data_file.exists():
        data = torch.load(data_file)
        encode_seconds = json.loads((work / "dataset.json").read_text())["seconds"]
    else:
        data = encode_dataset(vae, enc, proc, rng, args.dataset)
        torch.save(data, data_file)
        encode_seconds = time.time() - start
        (work / "dataset.json").write_text(json.dumps({"videos": args.dataset, "seconds": encode_seconds}))
    log(f"dataset {tuple(data['latents'].shape)} std {data['latents'].std():.3f} ({encode_seconds:.0f}s)")

    torch.manual_seed(args.seed + 3)
    unet = UNetSpatioTemporalConditionModel(**UNET_CONFIG)
    params = list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    sched = types.SimpleNamespace(step=lambda: None)  # lr is set by hand below (lr_at)
    gen = torch.Generator().manual_seed(args.seed + 4)
    budget = Budget(args.unet_steps, args.minutes_unet, encode_seconds)
    step, spent, losses = 0, 0.0, []
    ckpt = work / "unet_state.pt"
    if ckpt.exists():
        s = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        with torch.no_grad():
            for e, v in zip(ema, s["ema"]):
                e.copy_(v)
        set_rng_state(s["rng"], rng, gen)
        step, spent, losses, budget.total = s["step"], s["spent"], s["losses"], s["total"]
        budget.deadline -= spent
        log(f"unet: resumed at step {step}/{budget.total}")
    log(f"UNet {sum(p.numel() for p in params) / 1e6:.2f} M parameters, batch {args.unet_batch}")
    t0, saved, run = time.time(), time.time(), []
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = lr_at(args.unet_lr, step, budget.total or 10 ** 9)
        inp, t, embeds, ids, target = unet_batch(data, vae, gen, args)
        pred = unet(inp, t, encoder_hidden_states=embeds, added_time_ids=ids, return_dict=False)[0]
        loss = F.mse_loss(pred, target)
        optimise(loss, opt, sched, params, ema, args.ema, step)
        budget.tick(step, t0)
        run.append(loss.item())
        if step % args.log_every == 0:
            losses.append((step, round(float(np.mean(run)), 5)))
            log(f"unet step {step} loss {np.mean(run):.4f} (mean of {len(run)}) {time.time() - t0 + spent:.0f}s")
            run = []
        step += 1
        if time.time() - saved > 60 * args.checkpoint_minutes:
            save_state(ckpt, model=unet.state_dict(), opt=opt.state_dict(), ema=ema, rng=rng_state(rng, gen),
                       step=step, spent=spent + time.time() - t0, losses=losses, total=budget.total)
            saved = time.time()
    seconds = spent + time.time() - t0
    load_ema(params, ema)
    unet.save_pretrained(work / "unet")
    json.dump({"seconds": seconds, "encode_seconds": encode_seconds, "steps": step, "batch": args.unet_batch,
               "lr": args.unet_lr, "ema": args.ema, "p_mean": args.p_mean, "p_std": args.p_std,
               "aug_mean": args.aug_mean, "aug_std": args.aug_std, "cond_dropout": args.cond_dropout,
               "dataset": len(data["latents"]), "seed": args.seed, "threads": args.threads, "buckets": BUCKETS,
               "losses": losses}, open(work / "unet_train.json", "w"), indent=1)
    ckpt.unlink(missing_ok=True)
    log(f"UNet done: {step} steps in {seconds:.0f}s (+{encode_seconds:.0f}s encoding)")


# ----------------------------------------------------------------------------- export

def export(args) -> None:
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    work, out = Path(args.work), Path(args.out)
    pipe = StableVideoDiffusionPipeline(
        vae=AutoencoderKLTemporalDecoder.from_pretrained(work / "vae"),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(work / "image_encoder"),
        unet=UNetSpatioTemporalConditionModel.from_pretrained(work / "unet"),
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
        feature_extractor=CLIPImageProcessor.from_pretrained(work / "feature_extractor"))
    # float16 on disk (the pack loads in the precision chosen on the node); the tiny CLIP tower stays
    # float32: transformers loads a checkpoint in its stored dtype, diffusers in float32, and the
    # pipeline feeds the CLIP output to the UNet
    pipe.unet.to(torch.float16)
    pipe.vae.to(torch.float16)
    kept = save_pipeline(pipe, out)
    index = json.loads((out / "model_index.json").read_text())
    index["feature_extractor"][1] = "CLIPImageProcessor"  # not the torchvision-less fallback's name
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if "MODEL_CARD.md" not in kept:
        (out / "MODEL_CARD.md").write_text(model_card(work))
    log(f"exported to {out}: {folder_mb(out):.1f} MB")


def model_card(work: Path) -> str:
    v = json.loads((work / "vae_train.json").read_text())
    vf = json.loads((work / "vae_full_train.json").read_text())
    u = json.loads((work / "unet_train.json").read_text())
    mapping = ", ".join(f"{d} {b}" for d, b in BUCKETS.items())
    vae_row = (f"| `vae` | {v['steps']} steps, batch {v['batch']} clips of {FRAMES} frames, {v['crop']}x{v['crop']} "
               f"crops around the path, L1 + L2 with foreground x5, KL {v['kl']}, latent noise {v['latent_noise']}, "
               f"AdamW {v['lr']} warm-up + cosine | {v['seconds']:.0f} s |")
    vae_full_row = (f"| `vae-full` | {vf['steps']} steps, batch {vf['batch']} clips of full {SIZE}x{SIZE} frames, "
                    f"the same loss, AdamW {vf['lr']} warm-up + cosine; scaling factor {vf['scaling_factor']:.4f} "
                    f"| {vf['seconds']:.0f} s |")
    unet_row = (f"| `unet` | {u['dataset']} videos encoded ({u['encode_seconds']:.0f} s; x2 by time reversal), "
                f"{u['steps']} steps, batch {u['batch']}, EDM v-prediction, log sigma ~ N({u['p_mean']}, "
                f"{u['p_std']}), AdamW {u['lr']} warm-up + cosine, EMA {u['ema']} | {u['seconds']:.0f} s |")
    return f"""# tiny-svd: a tiny trained Stable Video Diffusion (DRAFT, written by tools/train_svd_fixture.py)

Image-to-video with the real SVD architecture in diffusers format
(`StableVideoDiffusionPipeline.from_pretrained` and `vidinv.models.svd.load` read it), trained from
scratch on `vidinv.synthetic` shape videos: 64x64 pixels, {FRAMES} frames.

## Conditioning

* first frame: CLIP image embedding + VAE latent (noise-augmented, unscaled) on channels, as SVD;
* **direction = motion bucket id**: {mapping} (the pipeline's default 127 means right);
* fps is fixed at {FPS} (time id {FPS - 1}); noise augmentation strength as passed (trained on
  log-normal({u['aug_mean']}, {u['aug_std']}), median {math.exp(u['aug_mean']):.3f}; 0.02 is the default);
* the CLIP tower is randomly initialised and frozen (never trained): the first-frame latent
  carries the image, the one CLIP token only adds a per-video bias. Zero embeddings + zero latents
  are the unconditional input (conditioning dropout {u['cond_dropout']}), as the pipeline's CFG.

## Recipe (`tools/train_svd_fixture.py`, seeded, {u['threads']} CPU threads)

| stage | what | time |
|---|---|---|
{vae_row}
{vae_full_row}
{unet_row}

Replay exactly: `--vae-steps {v['steps']} --vae-full-steps {vf['steps']} --unet-steps {u['steps']}`.

## Quality

`python tools/evaluate_svd_fixture.py` (writes quality.json): TODO.
"""


# ----------------------------------------------------------------------------- entry

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["vae", "vae-full", "unet", "export", "all"], default="all")
    p.add_argument("--work", default=str(ROOT / ".fixture-work-svd"))
    p.add_argument("--out", default=str(ROOT / "assets" / "tiny-svd"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="resumable state every so often")
    p.add_argument("--minutes-vae", type=float, default=10.0, help="phase 1, crops")
    p.add_argument("--minutes-vae-full", type=float, default=12.0, help="phase 2, full frames")
    p.add_argument("--minutes-unet", type=float, default=36.0, help="dataset encoding included")
    p.add_argument("--vae-steps", type=int, help="fix the step count instead of timing it")
    p.add_argument("--vae-full-steps", type=int, help="fix the step count instead of timing it")
    p.add_argument("--unet-steps", type=int, help="fix the step count instead of timing it")
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-full-batch", type=int, default=4)
    p.add_argument("--vae-full-lr", type=float, default=5e-4)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--latent-noise", type=float, default=0.05)
    p.add_argument("--dataset", type=int, default=3000, help="training videos to encode (x2 by time reversal)")
    p.add_argument("--unet-batch", type=int, default=16)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--p-mean", type=float, default=0.7, help="log-normal sigma (SVD fine-tuning's shifted EDM)")
    p.add_argument("--p-std", type=float, default=1.6)
    p.add_argument("--aug-mean", type=float, default=-3.0, help="log-normal noise augmentation strength")
    p.add_argument("--aug-std", type=float, default=0.5)
    p.add_argument("--cond-dropout", type=float, default=0.1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    stages = {"vae": [train_vae], "vae-full": [train_vae_full], "unet": [train_unet], "export": [export],
              "all": [train_vae, train_vae_full, train_unet, export]}[args.stage]
    for stage in stages:
        stage(args)


if __name__ == "__main__":
    main()
