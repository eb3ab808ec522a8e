"""What the bundled fixtures (assets/tiny-cogvideox*, assets/tiny-svd) are defined by, beyond their
weights: the caption tokenizer, the SVD fixture's conditioning (direction = motion bucket, fixed
fps) and the exported folder format. Used by tools/train_*, tools/evaluate_* and the benchmarks,
which build and measure the fixtures, and by the tests, which check them: one definition for both.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from . import synthetic
from .models import svd

TEXT_LEN = 16  # tokens per caption: the CogVideoX fixture's max_text_seq_length
VOCAB_WORDS = ["a", "an", "the", "moving", "shape", "video", "of", *synthetic.COLOURS, *synthetic.SHAPES,
               *synthetic.DIRECTIONS]
SCENE_VOCAB_WORDS = [*VOCAB_WORDS, "and"]  # the scenes' captions join two objects' ("... and ...")

# The tiny SVD has no text, and one still frame does not say where the shape goes: the direction
# is given by the motion bucket id (an added time id the pipeline always passes); fps is fixed.
BUCKETS = {"left": 63, "right": 127, "up": 191, "down": 255}  # 127 (the pipeline's default) = right
FPS = 7


def build_tokenizer(words: list[str] = VOCAB_WORDS, length: int = TEXT_LEN):
    """A word-level tokenizer over the caption vocabulary, built with `tokenizers` (nothing is
    downloaded) and wrapped so that `AutoTokenizer.from_pretrained` loads it from the folder.
    Ids follow T5: 0 pad, 1 end of sequence, 2 unknown; every sequence ends with </s>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=length)


def first_frame_conditioning(model, firsts: torch.Tensor, buckets: list[int], seed: int) -> svd.Conditioning:
    """One conditioning row per first frame [N, H, W, 3], each with its own motion bucket (the
    fixture's direction) and noise-augmentation seed (`seed` + row)."""
    conds = [svd.encode_image(model, firsts[j:j + 1], fps=FPS, motion_bucket_id=b, seed=seed + j)
             for j, b in enumerate(buckets)]
    return dataclasses.replace(conds[0], **{k: torch.cat([getattr(c, k) for c in conds])
                                            for k in ("image_embeds", "image_latents", "added_time_ids")})


def save_pipeline(pipe, out: Path) -> set[str]:
    """Replace the folder `out` with `pipe` in safetensors, keeping its MODEL_CARD.md and quality.json
    (returns the names kept). Configs carry no ``_name_or_path``: diffusers records there the
    folder a module was loaded from, an absolute path of the training machine."""
    keep = {p.name: p.read_bytes() for p in out.glob("*") if p.name in ("MODEL_CARD.md", "quality.json")}
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    for cfg in out.glob("*/config.json"):
        data = json.loads(cfg.read_text())
        if data.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for name, data in keep.items():
        (out / name).write_bytes(data)
    return set(keep)
