"""Train the bundled tiny CogVideoX-architecture model on synthetic shape videos.

Stages (each seeded and reproducible on CPU; run in order):

    python tools/train_fixture.py vae      # AutoencoderKLCogVideoX, 8x spatial / 4x temporal
    python tools/train_fixture.py dit      # T5EncoderModel + CogVideoXTransformer3DModel, v-prediction
    python tools/train_fixture.py vae-decoder   # refine the VAE decoder (encoder and latents fixed)
    python tools/train_fixture.py export   # diffusers folder -> assets/tiny-cogvideox
    python tools/train_fixture.py i2v      # image-to-video transformer, fine-tuned from the T2V one
    python tools/train_fixture.py export --i2v   # -> assets/tiny-cogvideox-i2v

Intermediate checkpoints go to --work (default: .fixture-work/, git-ignored). The recipe is
written down in assets/tiny-cogvideox/MODEL_CARD.md; quality is measured by
tools/evaluate_fixture.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.fixturekit import (FRAMES, SIZE, add_clip_arguments, clip_size, folder_mb, load_ema, log,  # noqa: E402
                              object_weight, optimise, save_trained, to_model_space, training_clip, vae_batch)
from vidinv.fixture import SCENE_VOCAB_WORDS, TEXT_LEN, VOCAB_WORDS, build_tokenizer, save_pipeline  # noqa: E402
from vidinv.models.cogvideox import decodable, rope_fits  # noqa: E402

LATENT_CHANNELS = 16
VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["CogVideoXDownBlock3D"] * 4, up_block_types=["CogVideoXUpBlock3D"] * 4,
    block_out_channels=[16, 32, 64, 64], layers_per_block=1, latent_channels=LATENT_CHANNELS,
    norm_num_groups=8, temporal_compression_ratio=4, sample_height=SIZE, sample_width=SIZE,
    use_quant_conv=False, use_post_quant_conv=False,
)
T5_CONFIG = dict(
    d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=16, dropout_rate=0.0, feed_forward_proj="gated-gelu",
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False,
)
TRANSFORMER_CONFIG = dict(
    num_attention_heads=4, attention_head_dim=32, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
    time_embed_dim=128, text_embed_dim=T5_CONFIG["d_model"], num_layers=8, sample_width=SIZE // 8,
    sample_height=SIZE // 8, sample_frames=FRAMES, patch_size=2, temporal_compression_ratio=4,
    max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=True,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing", set_alpha_to_one=True,
    prediction_type="v_prediction", clip_sample=False, steps_offset=0,
)


def seed_all(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- VAE

def train_vae(args) -> None:
    from diffusers import AutoencoderKLCogVideoX
    rng = seed_all(args.seed)
    if args.init:  # fine-tune an exported fixture's VAE (stored in float16)
        vae = AutoencoderKLCogVideoX.from_pretrained(Path(args.init) / "vae", torch_dtype=torch.float32)
    else:
        vae = AutoencoderKLCogVideoX(**dict(VAE_CONFIG, latent_channels=args.latent_channels or LATENT_CHANNELS))
    log(f"VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, {args.steps} steps")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    start, size = time.time(), clip_size(args)
    for step in range(args.steps):
        x = vae_batch(rng, args.batch, args.crop, args.scenes, size)
        post = vae.encode(x).latent_dist
        z = post.sample()
        # a little latent noise makes the decoder forgiving of imprecise latents (the transformer's)
        z = z + args.latent_noise * z.detach().std() * torch.randn_like(z)
        y = vae.decode(decodable(z)).sample[:, :, :x.shape[2]]  # an even latent count as the pack decodes it
        err = y - x
        weight = object_weight(x)
        loss = (weight * (err.abs() + err.pow(2))).mean() + args.kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            mse = err.pow(2).mean().item() / 4  # back to 0..1 range
            log(f"vae step {step} loss {loss.item():.4f} psnr {10 * math.log10(1 / max(mse, 1e-10)):.2f} "
                f"{time.time() - start:.0f}s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(work / "vae")
    scale = latent_scaling_factor(vae, rng, args.scenes)
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(work / "vae")
    json.dump({"seconds": time.time() - start, "steps": args.steps, "batch": args.batch, "crop": args.crop,
               "lr": args.lr, "kl": args.kl, "latent_noise": args.latent_noise, "seed": args.seed,
               "scaling_factor": scale, "scenes": args.scenes, "init": args.init},
              open(work / "vae_train.json", "w"), indent=1)
    log(f"VAE done in {time.time() - start:.0f}s, scaling_factor {scale:.4f}")


def train_vae_decoder(args) -> None:
    """Refine only the decoder of the trained VAE (the encoder, hence every latent the
    transformer was trained on, stays fixed)."""
    from diffusers import AutoencoderKLCogVideoX
    rng = seed_all(args.seed + 5)
    work = Path(args.work)
    vae = AutoencoderKLCogVideoX.from_pretrained(work / "vae")
    vae.encoder.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    start, size = time.time(), clip_size(args)
    for step in range(args.steps):
        x = vae_batch(rng, args.batch, args.crop, args.scenes, size)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
            z = z + args.latent_noise * z.std() * torch.randn_like(z)
        err = vae.decode(decodable(z)).sample[:, :, :x.shape[2]] - x
        weight = object_weight(x)
        loss = (weight * (err.abs() + err.pow(2))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            mse = err.pow(2).mean().item() / 4
            log(f"decoder step {step} loss {loss.item():.4f} psnr {10 * math.log10(1 / max(mse, 1e-10)):.2f} "
                f"{time.time() - start:.0f}s")
    vae.save_pretrained(work / "vae")
    json.dump({"seconds": time.time() - start, "steps": args.steps, "batch": args.batch, "crop": args.crop,
               "lr": args.lr, "seed": args.seed, "scenes": args.scenes},
              open(work / "vae_decoder_train.json", "w"), indent=1)
    log(f"decoder refined in {time.time() - start:.0f}s")


@torch.no_grad()
def latent_scaling_factor(vae, rng: np.random.Generator, scene_share: float, count: int = 64) -> float:
    frames = np.stack([training_clip(rng, scene_share)[1] for _ in range(count)])
    z = vae.encode(to_model_space(frames)).latent_dist.mode()
    return float(1.0 / z.std())


# ----------------------------------------------------------------------------- text

def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """As the CogVideoX pipeline does: pad to the model's length, truncate, no attention mask."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     add_special_tokens=True, return_tensors="pt").input_ids


# ----------------------------------------------------------------------------- transformer

def alphas_cumprod() -> torch.Tensor:
    from diffusers import CogVideoXDDIMScheduler
    return CogVideoXDDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod.float()


@torch.no_grad()
def encode_dataset(vae, rng: np.random.Generator, count: int, scene_share: float, size: tuple[int, int, int],
                   batch: int = 32):
    """Latents of clips of `size` (posterior mean x scaling factor, layout [N, F, C, H, W]) and captions."""
    latents, captions = [], []
    scale = vae.config.scaling_factor
    for start in range(0, count, batch):
        clips = [training_clip(rng, scene_share, size) for _ in range(min(batch, count - start))]
        specs = [spec for spec, _ in clips]
        frames = np.stack([f for _, f in clips])
        z = vae.encode(to_model_space(frames)).latent_dist.mode() * scale
        latents.append(z.permute(0, 2, 1, 3, 4).contiguous())
        captions += [s.caption for s in specs]
        if start % (batch * 40) == 0:
            log(f"encoded {start + len(specs)}/{count}")
    return torch.cat(latents), captions


def noised(x0: torch.Tensor, abar: torch.Tensor, gen: torch.Generator, low_share: float = 0.0):
    """A v-prediction training pair: random timesteps (uniform; a share `low_share` of the batch
    from the lowest quarter instead, where edits must keep what the latent already holds), x_t and
    the v target."""
    t = torch.randint(0, abar.numel(), (x0.shape[0],), generator=gen)
    if low_share:  # (no draw otherwise: the generator's stream stays the recipe's without it)
        low = torch.rand(x0.shape[0], generator=gen) < low_share
        t[low] = torch.randint(0, abar.numel() // 4, (int(low.sum()),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1, 1)
    return t, a.sqrt() * x0 + (1 - a).sqrt() * noise, a.sqrt() * noise - (1 - a).sqrt() * x0


def transformer_config(args, channels: int = LATENT_CHANNELS) -> dict:
    """TRANSFORMER_CONFIG with the shape options given (--layers, --heads, --head-dim, --text-len,
    --text-width, the clip's --frames / --height / --width as its sample size) and the VAE's latent `channels` in
    and out: other models of the same family, e.g. held-out models the defaults were not tuned on."""
    frames, height, width = clip_size(args)
    shape = {"num_layers": args.layers, "num_attention_heads": args.heads, "attention_head_dim": args.head_dim,
             "max_text_seq_length": args.text_len, "text_embed_dim": args.text_width,
             "in_channels": channels, "out_channels": channels,
             "sample_frames": frames, "sample_height": height // 8, "sample_width": width // 8}
    cfg = {**TRANSFORMER_CONFIG, **{k: v for k, v in shape.items() if v is not None}}
    if not rope_fits(cfg["attention_head_dim"]):  # the loader's rule, before the dataset is encoded
        raise SystemExit(f"--head-dim {cfg['attention_head_dim']}: CogVideoX's 3-D RoPE needs a multiple of 16")
    return cfg


def train_dit(args) -> None:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel
    from vidinv.models.rope import rotary_table

    transformer_config(args)  # a shape diffusers cannot build is refused before the dataset is encoded
    rng = seed_all(args.seed + 1)
    work = Path(args.work)
    start = time.time()
    vae = AutoencoderKLCogVideoX.from_pretrained(work / "vae").eval()
    data_file = work / "latents.pt"
    if data_file.exists():
        data = torch.load(data_file)
    else:
        z, caps = encode_dataset(vae, rng, args.dataset, args.scenes, clip_size(args))
        data = {"latents": z, "captions": caps}
        torch.save(data, data_file)
    encode_seconds = time.time() - start
    latents, captions = data["latents"], data["captions"]
    log(f"dataset {tuple(latents.shape)} std {latents.std():.3f} ({encode_seconds:.0f}s)")

    tokenizer = build_tokenizer(SCENE_VOCAB_WORDS if args.scenes else VOCAB_WORDS, args.text_len or TEXT_LEN)
    if args.init:  # fine-tune an exported fixture; new words get new embedding rows
        text_encoder = T5EncoderModel.from_pretrained(Path(args.init) / "text_encoder", torch_dtype=torch.float32)
        text_encoder.resize_token_embeddings(len(tokenizer))
        transformer = CogVideoXTransformer3DModel.from_pretrained(Path(args.init) / "transformer",
                                                                  torch_dtype=torch.float32)
    else:
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **{
            **T5_CONFIG, **({"d_model": args.text_width} if args.text_width else {})}))
        transformer = CogVideoXTransformer3DModel(**transformer_config(args, latents.shape[2]))
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    log(f"transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M, {args.steps} steps")
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.03)
    abar = alphas_cumprod()
    f, _, h, w = latents.shape[1:]
    rope = rotary_table(transformer.config, f, h, w)
    all_ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])
    gen = torch.Generator().manual_seed(args.seed + 2)
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        x0 = latents[idx]
        ids = all_ids[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < args.caption_dropout
        ids[drop] = empty_ids
        t, xt, v = noised(x0, abar, gen, args.low_t)
        text = text_encoder(ids)[0]
        pred = transformer(xt, text, t, image_rotary_emb=rope, return_dict=False)[0]
        loss = F.mse_loss(pred, v)
        optimise(loss, opt, sched, params, ema, args.ema, step)
        if step % 200 == 0 or step == args.steps - 1:
            log(f"dit step {step} loss {loss.item():.4f} {time.time() - start:.0f}s")
    load_ema(params, ema)
    transformer.save_pretrained(work / "transformer")
    text_encoder.save_pretrained(work / "text_encoder")
    tokenizer.save_pretrained(work / "tokenizer")
    json.dump({"seconds": time.time() - start, "encode_seconds": encode_seconds, "steps": args.steps,
               "batch": args.batch, "lr": args.lr, "ema": args.ema, "caption_dropout": args.caption_dropout,
               "dataset": len(latents), "seed": args.seed, "scenes": args.scenes, "low_t": args.low_t,
               "init": args.init, "clip": clip_size(args), "shape": {
                   k: v for k, v in transformer_config(args).items()
                   if k in ("num_layers", "num_attention_heads", "attention_head_dim")}},
              open(work / "dit_train.json", "w"), indent=1)
    log(f"transformer done in {time.time() - start:.0f}s")


# ----------------------------------------------------------------------------- I2V

@torch.no_grad()
def encode_first_frames(vae, rng: np.random.Generator, count: int, size: tuple[int, int, int], batch: int = 32):
    """Latents of clips of `size` (frames, height, width), first-frame latents (the I2V conditioning, zero-padded in
    time as the diffusers I2V pipeline does) and captions."""
    latents, images, captions = [], [], []
    scale = vae.config.scaling_factor
    for start in range(0, count, batch):
        clips = [training_clip(rng, 0.0, size) for _ in range(min(batch, count - start))]
        specs = [spec for spec, _ in clips]
        frames = to_model_space(np.stack([f for _, f in clips]))
        z = vae.encode(frames).latent_dist.mode() * scale
        img = vae.encode(frames[:, :, :1]).latent_dist.mode() * scale
        latents.append(z.permute(0, 2, 1, 3, 4).contiguous())
        pad = torch.zeros(img.shape[0], z.shape[2] - 1, *img.shape[1:2], *img.shape[3:])
        images.append(torch.cat([img.permute(0, 2, 1, 3, 4), pad], dim=1))
        captions += [s.caption for s in specs]
    return torch.cat(latents), torch.cat(images), captions


def train_i2v(args) -> None:
    """Image-to-video from the text-to-video transformer, as CogVideoX-5B-I2V was made: the patch
    embedding takes twice the channels (video latent + first-frame latent), the new input
    channels start at zero, position embeddings are learned (5B-I2V's layout). Every other setting is the
    text-to-video transformer's own (a held-out model's shape, channels and sample size); the clips are
    --frames / --height / --width, which must be the ones it was trained on."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel
    from vidinv.models.rope import rotary_table

    rng = seed_all(args.seed + 3)
    work = Path(args.work)
    start = time.time()
    vae = AutoencoderKLCogVideoX.from_pretrained(work / "vae").eval()
    t2v = CogVideoXTransformer3DModel.from_pretrained(work / "transformer")
    frames, height, width = clip_size(args)
    sample = (t2v.config.sample_frames, t2v.config.sample_height * 8, t2v.config.sample_width * 8)
    if sample != (frames, height, width):  # learned position embeddings hold one size: the one it was trained on
        raise SystemExit(f"--frames {frames} --height {height} --width {width}: the text-to-video transformer in "
                         f"{work} was trained on {sample[0]} x {sample[1]} x {sample[2]} clips; give those")
    latents, images, captions = encode_first_frames(vae, rng, args.dataset, (frames, height, width))
    encode_seconds = time.time() - start
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    text_encoder = T5EncoderModel.from_pretrained(work / "text_encoder").eval().requires_grad_(False)
    transformer = CogVideoXTransformer3DModel.from_config(
        dict(t2v.config, in_channels=2 * t2v.config.in_channels, use_learned_positional_embeddings=True))
    state = t2v.state_dict()
    w = state["patch_embed.proj.weight"]
    state["patch_embed.proj.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    missing, unexpected = transformer.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"patch_embed.pos_embedding"}, (missing, unexpected)
    params = list(transformer.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    abar = alphas_cumprod()
    f, _, h, w_ = latents.shape[1:]
    rope = rotary_table(transformer.config, f, h, w_)
    with torch.no_grad():
        text_all = text_encoder(tokenize(tokenizer, captions))[0]
        text_empty = text_encoder(tokenize(tokenizer, [""]))[0]
    gen = torch.Generator().manual_seed(args.seed + 4)
    log(f"I2V transformer {sum(p.numel() for p in params) / 1e6:.2f} M, {args.steps} steps")
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        x0, img, text = latents[idx], images[idx], text_all[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < args.caption_dropout
        text[drop] = text_empty
        t, xt, v = noised(x0, abar, gen)
        pred = transformer(torch.cat([xt, img], dim=2), text, t, image_rotary_emb=rope, return_dict=False)[0]
        loss = F.mse_loss(pred, v)
        optimise(loss, opt, sched, params, ema, args.ema, step)
        if step % 200 == 0 or step == args.steps - 1:
            log(f"i2v step {step} loss {loss.item():.4f} {time.time() - start:.0f}s")
    save_trained(transformer, params, ema, work / "transformer_i2v", {
        "encode_seconds": encode_seconds, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "dataset": len(latents), "seed": args.seed}, work / "i2v_train.json", start)
    log(f"I2V done in {time.time() - start:.0f}s")


# ----------------------------------------------------------------------------- export

def export(args) -> None:
    """Assemble the diffusers folder(s); weights stored in float16 to keep them small.
    ``--i2v`` exports the image-to-video model instead (default folder tiny-cogvideox-i2v)."""
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline,
                           CogVideoXPipeline, CogVideoXTransformer3DModel)
    from transformers import AutoTokenizer, T5EncoderModel
    work, out = Path(args.work), Path(args.out)
    if args.i2v and out.name == "tiny-cogvideox":
        out = out.with_name("tiny-cogvideox-i2v")
    pipeline = CogVideoXImageToVideoPipeline if args.i2v else CogVideoXPipeline
    pipe = pipeline(
        tokenizer=AutoTokenizer.from_pretrained(work / "tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(work / "text_encoder"),
        vae=AutoencoderKLCogVideoX.from_pretrained(work / "vae"),
        transformer=CogVideoXTransformer3DModel.from_pretrained(work / ("transformer_i2v" if args.i2v else "transformer")),
        scheduler=CogVideoXDDIMScheduler(**SCHEDULER_CONFIG),
    )
    # float16 on disk for the big parts; the small T5 stays float32 because transformers loads a
    # checkpoint in its stored dtype by default, and the pipelines then feed fp16 text to fp32 models
    pipe.transformer.to(torch.float16)
    pipe.vae.to(torch.float16)
    save_pipeline(pipe, out)
    log(f"exported to {out}: {folder_mb(out):.1f} MB")


# ----------------------------------------------------------------------------- entry

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["vae", "dit", "vae-decoder", "i2v", "export"])
    p.add_argument("--work", default=str(ROOT / ".fixture-work"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--latent-noise", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", type=int, default=6000)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.12)
    p.add_argument("--out", default=str(ROOT / "assets" / "tiny-cogvideox"))
    p.add_argument("--i2v", action="store_true", help="export: the image-to-video model")
    p.add_argument("--scenes", type=float, default=0.0,
                   help="share of two-object scenes (vidinv.scenes) in the training videos; the rest are single shapes")
    p.add_argument("--init", default=None, help="vae / dit: fine-tune the parts of this exported folder")
    p.add_argument("--layers", type=int, default=None, help="dit: transformer blocks (default: the bundled model's)")
    p.add_argument("--heads", type=int, default=None, help="dit: attention heads (default: the bundled model's)")
    p.add_argument("--text-len", type=int, default=None,
                   help="dit: tokens per caption, the transformer's max_text_seq_length (default: the bundled 16)")
    p.add_argument("--text-width", type=int, default=None,
                   help="dit: T5 d_model, the transformer's text_embed_dim (default: the bundled 64)")
    p.add_argument("--head-dim", type=int, default=None, help="dit: channels per head (default: the bundled model's)")
    p.add_argument("--latent-channels", type=int, default=None,
                   help="vae: latent channels (default: the bundled 16); the transformer takes its VAE's")
    add_clip_arguments(p)
    p.add_argument("--low-t", type=float, default=0.0,
                   help="dit: share of each batch with timesteps from the lowest quarter")
    args = p.parse_args(argv)
    clip_size(args)  # a clip size the VAE and the patches cannot tile is refused before any work
    torch.set_num_threads(args.threads)
    defaults = {"vae": dict(steps=2400, batch=8, lr=2e-3), "dit": dict(steps=5500, batch=32, lr=1e-3),
                "i2v": dict(steps=1500, batch=32, lr=5e-4), "vae-decoder": dict(steps=350, batch=8, lr=5e-4)}
    for k, v in defaults.get(args.stage, {}).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    stages = {"vae": train_vae, "dit": train_dit, "vae-decoder": train_vae_decoder, "i2v": train_i2v,
              "export": export}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
