"""Train the bundled tiny Wan 2.1-architecture model (assets/tiny-wan) on the synthetic shape videos.

Stages (each seeded and reproducible on CPU; run in order):

    python tools/train_wan_fixture.py vae      # AutoencoderKLWan, 8x spatial / 4x temporal
    python tools/train_wan_fixture.py dit      # UMT5EncoderModel + WanTransformer3DModel, flow matching
    python tools/train_wan_fixture.py vae-decoder   # refine the VAE decoder (encoder and latents fixed)
    python tools/train_wan_fixture.py export   # diffusers folder -> assets/tiny-wan

An image-to-video model (channel conditioning, as Wan 2.2 I2V lays it out; one expert; with --clip-width also CLIP
tokens, Wan 2.1 I2V's layout) is trained from a text-to-video folder and exported beside it; not bundled (BENCHMARKS
section 6, "Wan image-to-video edits"):

    python tools/train_wan_fixture.py i2v --i2v-from assets/tiny-wan --work W
    python tools/train_wan_fixture.py export --i2v-from assets/tiny-wan --work W --out O

A held-out model (BENCHMARKS section 6, "Defaults on a model not tuned on") is the same recipe with
another --seed and other shapes: --blocks, --heads, --head-dim, --ffn, --text-width, --text-layers
(the transformer and UMT5), --latent-channels (the vae stage's; the transformer takes its VAE's), --frames /
--height / --width (the training clips of every stage: another frame size; a VAE reconstructs reliably only the clip
length it was trained on, the bundled one 9 frames), or
--vae-from FOLDER to reuse a trained Wan folder's VAE (its latent channels) instead of training one, --out outside
the repository.

Intermediate checkpoints go to --work (default: .fixture-work-wan/, git-ignored). The recipe is in
assets/tiny-wan/MODEL_CARD.md; tools/evaluate_wan_fixture.py measures the gates.
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

from tools.fixturekit import (add_clip_arguments, clip_size, folder_mb, load_ema, log, optimise,  # noqa: E402
                              save_trained, to_model_space, train_seed, vae_batch)
from vidinv import synthetic  # noqa: E402
from vidinv.fixture import build_tokenizer, save_pipeline  # noqa: E402

LATENT_CHANNELS = 16
TEXT_LEN = 512  # what WanPipeline pads prompts to (its max_sequence_length; the I2V attention assumes it)
CAPTION_LEN = 16  # captions are shorter: UMT5 with its attention mask gives the same embeddings at 16 or 512
VAE_CONFIG = dict(base_dim=16, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                  temperal_downsample=[False, True, True])
UMT5_CONFIG = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False)
TRANSFORMER_CONFIG = dict(patch_size=[1, 2, 2], num_attention_heads=4, attention_head_dim=32,
                          in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, text_dim=UMT5_CONFIG["d_model"],
                          freq_dim=64, ffn_dim=256, num_layers=8, cross_attn_norm=True,
                          qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
# as the Wan 2.1 diffusers folders ship it: UniPC over flow sigmas with a shift (the pack samples Euler on it)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                        flow_shift=3.0, solver_order=2, predict_x0=True, solver_type="bh2", lower_order_final=True,
                        final_sigmas_type="zero", timestep_spacing="linspace")


def seed_all(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def psnr_of(err: torch.Tensor) -> float:
    mse = err.pow(2).mean().item() / 4  # -1..1 -> 0..1
    return 10 * math.log10(1 / max(mse, 1e-10))


# ----------------------------------------------------------------------------- VAE

def vae_step_loss(vae, x: torch.Tensor, kl: float, latent_noise: float, encoder: bool = True) -> tuple:
    post = vae.encode(x).latent_dist
    # the posterior mean (what the pack encodes with) plus a little noise, for a forgiving decoder: the
    # posterior's own noise starts at std 1, far above the mean's spread, and hides the signal for long
    z = post.mode() if encoder else post.mode().detach()
    z = z + latent_noise * z.detach().std() * torch.randn_like(z)
    err = vae.decode(z).sample - x
    weight = 1.0 + 4.0 * (x.amax(dim=1, keepdim=True) > -0.9).float()  # the few foreground pixels weigh more
    return (weight * (err.abs() + err.pow(2))).mean() + kl * post.kl().mean(), err


def fit_vae(vae, params, sched, rng, args, kl: float, encoder: bool, label: str) -> float:
    """The VAE training loop (whole VAE, or the decoder alone with `encoder` False); returns seconds."""
    opt = sched.optimizer
    start, size = time.time(), clip_size(args)
    for step in range(args.steps):
        loss, err = vae_step_loss(vae, vae_batch(rng, args.batch, args.crop, size=size), kl, args.latent_noise, encoder)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            log(f"{label} step {step} loss {loss.item():.4f} psnr {psnr_of(err):.2f} {time.time() - start:.0f}s")
    return time.time() - start


def train_vae(args) -> None:
    from diffusers import AutoencoderKLWan
    rng = seed_all(args.seed)
    vae = AutoencoderKLWan(**dict(VAE_CONFIG, z_dim=args.latent_channels or LATENT_CHANNELS))
    params = list(vae.parameters())
    log(f"VAE {sum(p.numel() for p in params) / 1e6:.2f} M parameters, {args.steps} steps")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    seconds = fit_vae(vae, params, sched, rng, args, args.kl, True, "vae")
    mean, std = latent_statistics(vae, rng, clip_size(args))
    vae.register_to_config(latents_mean=mean, latents_std=std)
    work = Path(args.work)
    vae.save_pretrained(work / "vae")
    json.dump({"seconds": seconds, "steps": args.steps, "batch": args.batch, "crop": args.crop, "lr": args.lr,
               "kl": args.kl, "latent_noise": args.latent_noise, "clip": clip_size(args), "seed": args.seed},
              open(work / "vae_train.json", "w"), indent=1)
    log(f"VAE done in {seconds:.0f}s")


def train_vae_decoder(args) -> None:
    """Refine only the decoder (the encoder, hence every latent the transformer is trained on, stays
    fixed), at a lower learning rate on a cosine schedule."""
    from diffusers import AutoencoderKLWan
    rng = seed_all(args.seed + 5)
    work = Path(args.work)
    vae = AutoencoderKLWan.from_pretrained(work / "vae")
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    seconds = fit_vae(vae, params, torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps), rng, args, 0.0, False,
                      "decoder")
    vae.save_pretrained(work / "vae")
    json.dump({"seconds": seconds, "steps": args.steps, "batch": args.batch, "crop": args.crop, "lr": args.lr,
               "seed": args.seed}, open(work / "vae_decoder_train.json", "w"), indent=1)
    log(f"decoder refined in {seconds:.0f}s")


@torch.no_grad()
def latent_statistics(vae, rng: np.random.Generator, size: tuple[int, int, int], count: int = 64) -> tuple[list, list]:
    """Per-channel mean and std of the posterior means of `count` clips of `size`: Wan normalises latents with them
    (``(z - latents_mean) / latents_std``), as its VAE config records."""
    frames = np.stack([synthetic.render(synthetic.random_spec(train_seed(rng), *size))
                       for _ in range(count)])
    z = vae.encode(to_model_space(frames)).latent_dist.mode()
    return z.mean(dim=(0, 2, 3, 4)).tolist(), z.std(dim=(0, 2, 3, 4)).tolist()


# ----------------------------------------------------------------------------- text

def encode_captions(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    """As WanPipeline does: UMT5 with its attention mask, the embeddings cut at each prompt's length
    and zero-padded to TEXT_LEN."""
    tok = tokenizer(captions, padding="max_length", max_length=CAPTION_LEN, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    emb = text_encoder(tok.input_ids, tok.attention_mask).last_hidden_state * tok.attention_mask[..., None]
    return F.pad(emb, (0, 0, 0, TEXT_LEN - CAPTION_LEN))


# ----------------------------------------------------------------------------- transformer

@torch.no_grad()
def encode_dataset(vae, rng: np.random.Generator, count: int, size: tuple[int, int, int], batch: int = 32):
    """Normalised latents of clips of `size` (frames, height, width; posterior mean, ``(z - mean) / std``, layout
    [N, C, F, H, W]) and captions."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents, captions = [], []
    for start in range(0, count, batch):
        specs = [synthetic.random_spec(train_seed(rng), *size) for _ in range(min(batch, count - start))]
        z = vae.encode(to_model_space(np.stack([synthetic.render(s) for s in specs]))).latent_dist.mode()
        latents.append((z - mean) / std)
        captions += [s.caption for s in specs]
        if start % (batch * 40) == 0:
            log(f"encoded {start + len(specs)}/{count}")
    return torch.cat(latents), captions


def shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-shift map of the Wan schedulers: sigma' = s sigma / (1 + (s - 1) sigma)."""
    return shift * u / (1 + (shift - 1) * u)


def shapes(args, channels: int) -> tuple[dict, dict]:
    """(UMT5 config, transformer config): the bundled model's, with the shapes the arguments change and the
    VAE's latent `channels` in and out."""
    text = dict(UMT5_CONFIG)
    if args.text_width:
        text.update(d_model=args.text_width, d_kv=args.text_width // text["num_heads"], d_ff=2 * args.text_width)
    if args.text_layers:
        text.update(num_layers=args.text_layers)
    model = dict(TRANSFORMER_CONFIG, text_dim=text["d_model"], in_channels=channels, out_channels=channels)
    for key, value in (("num_layers", args.blocks), ("num_attention_heads", args.heads),
                       ("attention_head_dim", args.head_dim), ("ffn_dim", args.ffn)):
        if value:
            model[key] = value
    return text, model


def copy_vae(args) -> None:
    """--vae-from: a trained Wan folder's VAE in float32 as this run's VAE (no VAE stage)."""
    from diffusers import AutoencoderKLWan
    AutoencoderKLWan.from_pretrained(Path(args.vae_from) / "vae", torch_dtype=torch.float32).save_pretrained(
        Path(args.work) / "vae")
    log(f"VAE taken from {args.vae_from}")


def train_dit(args) -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    size = clip_size(args)  # (frames, height, width): main refused a size the models cannot tile
    rng = seed_all(args.seed + 1)
    work = Path(args.work)
    start = time.time()
    if args.vae_from and not (work / "vae").exists():
        copy_vae(args)
    data_file = work / "latents.pt"
    if data_file.exists():
        data = torch.load(data_file)
    else:
        vae = AutoencoderKLWan.from_pretrained(work / "vae").eval()
        z, caps = encode_dataset(vae, rng, args.dataset, size)
        data = {"latents": z, "captions": caps}
        torch.save(data, data_file)
    encode_seconds = time.time() - start
    latents, captions = data["latents"], data["captions"]
    log(f"dataset {tuple(latents.shape)} std {latents.std():.3f} ({encode_seconds:.0f}s)")

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = TEXT_LEN
    text_config, transformer_config = shapes(args, latents.shape[1])
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **text_config))
    transformer = WanTransformer3DModel(**transformer_config)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    log(f"transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M, {args.steps} steps")
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.03)
    gen = torch.Generator().manual_seed(args.seed + 2)
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        x0 = latents[idx]
        caps = ["" if torch.rand((), generator=gen) < args.caption_dropout else captions[i] for i in idx.tolist()]
        sigma = shifted(torch.rand(args.batch, generator=gen), SCHEDULER_CONFIG["flow_shift"]).view(-1, 1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - sigma) * x0 + sigma * noise
        pred = transformer(xt, sigma.flatten() * 1000, encode_captions(text_encoder, tokenizer, caps),
                           return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)  # the flow velocity
        optimise(loss, opt, sched, params, ema, args.ema, step)
        if step % 200 == 0 or step == args.steps - 1:
            log(f"dit step {step} loss {loss.item():.4f} {time.time() - start:.0f}s")
    load_ema(params, ema)
    transformer.save_pretrained(work / "transformer")
    text_encoder.save_pretrained(work / "text_encoder")
    tokenizer.save_pretrained(work / "tokenizer")
    json.dump({"seconds": time.time() - start, "encode_seconds": encode_seconds, "steps": args.steps,
               "text_config": text_config, "transformer_config": transformer_config, "vae_from": args.vae_from,
               "batch": args.batch, "lr": args.lr, "ema": args.ema, "caption_dropout": args.caption_dropout,
               "dataset": len(latents), "clip": size, "seed": args.seed}, open(work / "dit_train.json", "w"), indent=1)
    log(f"transformer done in {time.time() - start:.0f}s")


# ----------------------------------------------------------------------------- image-to-video

def i2v_source(args):
    """The text-to-video folder an I2V model is trained from (--i2v-from), loaded by the pack; with --clip-width W
    also a CLIP vision encoder of width W and its image processor (random and frozen: the real one is pretrained and
    frozen too; 32 x 32 crops, 17 tokens), carried by the model so that the pack's own encoder makes the tokens."""
    import dataclasses
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    from vidinv.models import wan
    model = wan.load(args.i2v_from, "fp32")
    if model.takes_first_frame or model.transformer_2 is not None:
        raise SystemExit(f"--i2v-from {args.i2v_from}: needs a one-expert text-to-video Wan, got {model.describe()}")
    if not args.clip_width:
        return model
    torch.manual_seed(args.seed + 5)
    encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=args.clip_width, intermediate_size=2 * args.clip_width, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8)).eval().requires_grad_(False)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return dataclasses.replace(model, image_encoder=encoder, image_processor=processor)


@torch.no_grad()
def encode_i2v_dataset(model, rng: np.random.Generator, count: int, size: tuple[int, int, int]):
    """Latents [N, F, C, h, w], their first-frame conditioning [N, F, T + C, h, w], its CLIP tokens [N, 17, W]
    (None without an image encoder) and captions, encoded by the pack itself (`wan.encode_video`,
    `wan.encode_image_condition`): what the I2V model will be given in use."""
    from vidinv.models import wan
    latents, conds, tokens, captions = [], [], [], []
    for i in range(count):
        spec = synthetic.random_spec(train_seed(rng), *size)
        frames = torch.from_numpy(synthetic.render(spec))
        z = wan.encode_video(model, frames)
        latents.append(z)
        image = wan.encode_image_condition(model, frames[:1], z.shape[1])
        conds.append(image.latents)
        tokens.append(image.embeds)
        captions.append(spec.caption)
        if i % 200 == 0:
            log(f"encoded {i + 1}/{count}")
    return torch.cat(latents), torch.cat(conds), None if tokens[0] is None else torch.cat(tokens), captions


def train_i2v(args) -> None:
    """Image-to-video from the text-to-video folder --i2v-from: the patch embedding also takes the first-frame
    mask (one channel per frame of the VAE's temporal factor) and the first frame's latent (of the clip [first
    frame, grey frames]) on channels, which start at zero, so training starts from the text-to-video model; the VAE,
    UMT5 and tokenizer stay the folder's, frozen. Every transformer setting is the folder's own. --clip-width W: Wan
    2.1 I2V's layout instead, CLIP tokens through ``image_dim`` / ``added_kv_proj_dim`` (their value projection
    starts at zero, so again training starts from the text-to-video model)."""
    from diffusers import WanTransformer3DModel
    from vidinv.models import wan

    size = clip_size(args)
    model = i2v_source(args)
    rng = seed_all(args.seed + 3)
    work = Path(args.work)
    start = time.time()
    data_file = work / f"i2v_latents{f'_clip{args.clip_width}' if args.clip_width else ''}.pt"
    if data_file.exists():
        data = torch.load(data_file)
    else:
        z, cond, tokens, caps = encode_i2v_dataset(model, rng, args.dataset, size)
        data = {"latents": z, "conds": cond, "tokens": tokens, "captions": caps}
        torch.save(data, data_file)
    encode_seconds = time.time() - start
    latents, conds, tokens, captions = data["latents"], data["conds"], data["tokens"], data["captions"]
    t2v = model.transformer
    config = dict(t2v.config, in_channels=t2v.config.in_channels + conds.shape[2])
    if tokens is not None:
        config.update(image_dim=tokens.shape[-1], added_kv_proj_dim=t2v.config.num_attention_heads *
                      t2v.config.attention_head_dim)
    transformer = WanTransformer3DModel.from_config(config)
    state = t2v.state_dict()
    w = state["patch_embedding.weight"]
    state["patch_embedding.weight"] = torch.cat([w, w.new_zeros(w.shape[0], conds.shape[2], *w.shape[2:])], dim=1)
    missing, unexpected = transformer.load_state_dict(state, strict=False)
    image_parts = ("image_embedder", "add_k_proj", "add_v_proj", "norm_added_k")
    assert not unexpected and all(any(k in name for k in image_parts) for name in missing), (missing, unexpected)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "add_v_proj" in name:
                param.zero_()
    if tokens is not None:
        model.image_encoder.save_pretrained(work / "image_encoder")
        model.image_processor.save_pretrained(work / "image_processor")
    params = list(transformer.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    with torch.no_grad():
        text_all, text_empty = wan.encode_text(model, captions).embeds, wan.encode_text(model, "").embeds
    gen = torch.Generator().manual_seed(args.seed + 4)
    log(f"dataset {tuple(latents.shape)} + condition {tuple(conds.shape[1:])} ({encode_seconds:.0f}s); I2V "
        f"transformer {sum(p.numel() for p in params) / 1e6:.2f} M, {args.steps} steps")
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        x0, text = latents[idx], text_all[idx].clone()
        text[torch.rand(args.batch, generator=gen) < args.caption_dropout] = text_empty
        sigma = shifted(torch.rand(args.batch, generator=gen), model.flow_shift).view(-1, 1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - sigma) * x0 + sigma * noise
        inp = torch.cat([xt, conds[idx]], dim=2).permute(0, 2, 1, 3, 4)  # the transformer's [B, C, F, H, W]
        pred = transformer(inp, sigma.flatten() * 1000, text, None if tokens is None else tokens[idx],
                           return_dict=False)[0].permute(0, 2, 1, 3, 4)
        loss = F.mse_loss(pred, noise - x0)
        optimise(loss, opt, sched, params, ema, args.ema, step)
        if step % 200 == 0 or step == args.steps - 1:
            log(f"i2v step {step} loss {loss.item():.4f} {time.time() - start:.0f}s")
    save_trained(transformer, params, ema, work / "transformer_i2v", {
        "encode_seconds": encode_seconds, "steps": args.steps, "batch": args.batch, "lr": args.lr, "ema": args.ema,
        "caption_dropout": args.caption_dropout, "dataset": len(latents), "clip": size, "seed": args.seed,
        "from": str(args.i2v_from), "clip_width": args.clip_width}, work / "i2v_train.json", start)
    log(f"I2V transformer done in {time.time() - start:.0f}s")


# ----------------------------------------------------------------------------- export

def export(args) -> None:
    """Assemble the diffusers folder; the transformer and VAE stored in float16 (the pack loads
    them in the precision chosen on the node). With --i2v-from: the image-to-video model of the i2v stage, with the
    VAE, UMT5, tokenizer and scheduler of that folder (a WanImageToVideoPipeline without an image encoder)."""
    from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline,
                           WanTransformer3DModel)
    from transformers import AutoTokenizer, UMT5EncoderModel
    work, out = Path(args.work), Path(args.out)
    if args.i2v_from:
        from transformers import CLIPImageProcessor, CLIPVisionModel
        src, clip = Path(args.i2v_from), (work / "image_encoder").is_dir()
        if out.resolve() == (ROOT / "assets" / "tiny-wan").resolve():
            raise SystemExit("export --i2v-from: give --out (the image-to-video model is not bundled)")
        pipe = WanImageToVideoPipeline(
            tokenizer=AutoTokenizer.from_pretrained(src / "tokenizer"),
            text_encoder=UMT5EncoderModel.from_pretrained(src / "text_encoder"),
            vae=AutoencoderKLWan.from_pretrained(src / "vae", torch_dtype=torch.float32),
            transformer=WanTransformer3DModel.from_pretrained(work / "transformer_i2v"),
            scheduler=UniPCMultistepScheduler.from_pretrained(src / "scheduler"),
            image_encoder=CLIPVisionModel.from_pretrained(work / "image_encoder") if clip else None,
            image_processor=CLIPImageProcessor.from_pretrained(work / "image_processor") if clip else None)
    else:
        pipe = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(work / "tokenizer"),
                           text_encoder=UMT5EncoderModel.from_pretrained(work / "text_encoder"),
                           vae=AutoencoderKLWan.from_pretrained(work / "vae"),
                           transformer=WanTransformer3DModel.from_pretrained(work / "transformer"),
                           scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG))
    pipe.transformer.to(torch.float16)
    pipe.vae.to(torch.float16)
    save_pipeline(pipe, out)
    log(f"exported to {out}: {folder_mb(out):.1f} MB")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["vae", "dit", "vae-decoder", "i2v", "export"])
    p.add_argument("--work", default=str(ROOT / ".fixture-work-wan"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--latent-noise", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", type=int, default=4000)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.12)
    p.add_argument("--out", default=str(ROOT / "assets" / "tiny-wan"))
    p.add_argument("--blocks", type=int, default=None, help="transformer blocks (bundled: 8)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (bundled: 4)")
    p.add_argument("--head-dim", type=int, default=None, help="attention head width (bundled: 32)")
    p.add_argument("--ffn", type=int, default=None, help="transformer FFN width (bundled: 256)")
    p.add_argument("--text-width", type=int, default=None, help="UMT5 d_model = the transformer's text_dim (64)")
    p.add_argument("--text-layers", type=int, default=None, help="UMT5 layers (bundled: 2)")
    p.add_argument("--vae-from", default=None, help="reuse this Wan folder's VAE instead of the vae stage")
    p.add_argument("--latent-channels", type=int, default=None,
                   help="the vae stage's latent channels (bundled: 16); the transformer takes its VAE's")
    p.add_argument("--clip-width", type=int, default=0,
                   help="i2v stage: CLIP tokens of this width as Wan 2.1 I2V takes them (0: none, as Wan 2.2 I2V)")
    p.add_argument("--i2v-from", default=None,
                   help="i2v stage: the text-to-video Wan folder to start from; export: export the I2V model with it")
    add_clip_arguments(p)
    args = p.parse_args(argv)
    if args.stage == "i2v" and not args.i2v_from:
        raise SystemExit("the i2v stage needs --i2v-from FOLDER: the trained text-to-video Wan to start from")
    if args.clip_width < 0 or args.clip_width % 2:
        raise SystemExit(f"--clip-width {args.clip_width}: needs an even width (two CLIP heads), or 0 for no CLIP tokens")
    clip_size(args)  # a clip size the VAE and the patches cannot tile is refused before any work
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    defaults = {"vae": dict(steps=2000, batch=8, lr=2e-3), "dit": dict(steps=3000, batch=32, lr=1.5e-3),
                "vae-decoder": dict(steps=600, batch=8, lr=5e-4), "i2v": dict(steps=1200, batch=16, lr=1e-3)}
    for k, v in defaults.get(args.stage, {}).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    {"vae": train_vae, "dit": train_dit, "vae-decoder": train_vae_decoder, "i2v": train_i2v,
     "export": export}[args.stage](args)


if __name__ == "__main__":
    main()
