"""Edit masks: where an edit may change the video; outside the mask each sampling step's latent
follows the trajectory (Prompt-to-Prompt's local blend, Hertz et al. 2022; LEDITS++'s implicit
mask, Brack et al., CVPR 2024).

The mask comes from one of two maps (`SOURCES`), each smoothed and cut per frame (`mask_from_map`,
`CUTS`): above a quantile (as LEDITS++'s implicit mask, whose default quantile 0.9 lets the edit
change a tenth of each frame), or above Otsu's level (`otsu_levels`: the part that stands out,
however large):
- "attention": the sample's own attention, the image queries' attention to the text tokens that
  differ between the source and the edited prompt (`changed_tokens`), recorded by the family's
  attention processors (`Probe`), averaged over the probed layers and the steps so far;
- "difference": DiffEdit's map (Couairon et al., ICLR 2023), the difference of the model's
  predictions under the edited and the source prompt (and, image-to-video, first frame: an edited
  first frame counts as a change, `image_changed`) on the trajectory's own latents, made once
  before sampling (`difference_steps`, `difference_map`);
or it is given (ComfyUI's MASK, `from_pixels`). A map's cut level may be scaled (`EditMask`'s `level`:
below 1 the region's weaker edge is kept too); either may be grown by whole latent cells (`grow`). Then, after
sampling step i, ``x_{i+1} = m x_{i+1} + (1 - m) x^traj_{i+1}`` (`blend`). With the source prompt (and
first frame) nothing differs: the mask is empty and the sample is the trajectory's, so
reconstruction stays exact for every option.
"""
from __future__ import annotations

import dataclasses
import difflib
import math

import torch
import torch.nn.functional as F

from . import errors

HEAD_CHUNK = 8  # heads per softmax in the probe: [rows, 8, image tokens, text tokens] at a time
SOURCES = ("attention", "difference")
CUTS = ("quantile", "otsu")
# The difference map's probes: the cleanest 40 % of the sampling steps, at most 5 of them.
DIFFERENCE_WINDOW, DIFFERENCE_PROBES = (0.6, 1.0), 5
MAX_GROW = 16  # latent cells (128 pixels for CogVideoX and Wan): the widget's maximum
MAX_LEVEL = 4.0  # the cut level's largest scale (the widget's maximum; 4 x the level keeps only a map's peaks)


def changed_tokens(tokenize, source: list[str], edit: list[str], length: int) -> torch.Tensor:
    """``[B, length]`` float: 1 at the edited prompt's token positions that are not in the source
    prompt's token sequence (insertions and replacements of a token alignment), per row.
    `tokenize(text)` gives the token ids of one prompt as the text encoder sees them."""
    if len(source) == 1 and len(edit) > 1:
        source = source * len(edit)
    if len(source) != len(edit):
        raise errors.InputError(f"{len(edit)} edited prompts for {len(source)} source prompts",
                                "Give one edited prompt per source prompt.")
    out = torch.zeros(len(edit), length)
    for row, (a, b) in enumerate(zip(source, edit)):
        ids_a, ids_b = list(tokenize(a))[:length], list(tokenize(b))[:length]
        for tag, _, _, j0, j1 in difflib.SequenceMatcher(None, ids_a, ids_b, autojunk=False).get_opcodes():
            if tag in ("replace", "insert"):
                out[row, j0:j1] = 1.0
    return out


def prompt_tokens(tokenize, traj, cond, length: int) -> torch.Tensor:
    """`changed_tokens` between a trajectory's source prompt and a conditioning's prompt, one row per
    video (a batch's prompts are labelled "a | b | ...")."""
    rows = traj.latents.shape[1]

    def prompts(label: str) -> list[str]:
        parts = label.split(" | ")
        return parts if rows > 1 and len(parts) == rows else [label]

    return changed_tokens(tokenize, prompts(traj.prompt), prompts(cond.prompt), length)


def image_changed(source, edited, batch: int) -> torch.Tensor:
    """``[batch]`` bool: the videos whose image conditioning `edited` (an edited first frame's: a
    tensor ``[B or 1, ...]``, or a dataclass of such tensors) differs from the `source`'s; none
    when it is absent or the source's own."""
    out = torch.zeros(batch, dtype=torch.bool)
    if edited is None or edited is source:
        return out
    pairs = [(source, edited)] if isinstance(edited, torch.Tensor) else \
        [(getattr(source, f.name), getattr(edited, f.name)) for f in dataclasses.fields(edited)]
    for a, b in pairs:
        if a is None or b is None:
            out |= (a is None) != (b is None)
        else:
            d = (a.float() - b.float()).abs().flatten(1).amax(1)
            out |= (d > 0).expand(batch)
    return out


class Probe:
    """Collects, during the sample's network calls, the attention of the image queries of its last
    ``B`` rows (the conditional CFG rows) to the weighted text tokens: per call and layer
    ``sum_tokens softmax_text(q k^T / sqrt(d)) * tokens``, averaged over heads; `average()` is the
    mean over everything recorded, ``[B, image tokens]``."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens, self.total, self.count = tokens, None, 0

    def add(self, q_image: torch.Tensor, k_text: torch.Tensor) -> None:
        """q_image ``[R, heads, N, d]``, k_text ``[R, heads, L, d]`` (R >= B rows, conditional last)."""
        b = self.tokens.shape[0]
        q, k = q_image[-b:].float(), k_text[-b:].float()
        w = self.tokens.to(q.device)[:, None, :, None]  # [B, 1, L, 1]
        acc = torch.zeros(q.shape[0], q.shape[2], device=q.device)
        for h in range(0, q.shape[1], HEAD_CHUNK):
            probs = torch.softmax(q[:, h:h + HEAD_CHUNK] @ k[:, h:h + HEAD_CHUNK].transpose(-1, -2)
                                  / math.sqrt(q.shape[-1]), dim=-1)  # [B, h, N, L]
            acc += (probs @ w).squeeze(-1).sum(1)
        acc = (acc / q.shape[1]).cpu()
        self.total = acc if self.total is None else self.total + acc
        self.count += 1

    def average(self) -> torch.Tensor | None:
        return None if self.total is None else self.total / self.count


def otsu_levels(values: torch.Tensor) -> torch.Tensor:
    """Otsu's level (1979) of each row of `values` ``[..., N]``: the value that splits the row into a
    low and a high group with the largest between-group variance; ``[..., 1]``. The high group
    (``>= level``) is where the map stands out, however large that region is."""
    s, _ = values.sort(dim=-1)
    n = s.shape[-1]
    below = s.cumsum(-1)[..., :-1]  # sums of the k smallest, k = 1 .. n-1
    k = torch.arange(1, n, device=s.device, dtype=s.dtype)
    mean_low, mean_high = below / k, (s.sum(-1, keepdim=True) - below) / (n - k)
    spread = k * (n - k) * (mean_high - mean_low) ** 2
    return s[..., 1:].gather(-1, spread.argmax(-1, keepdim=True))


def mask_from_map(scores: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int],
                  latent_shape, threshold: float, cut: str = "quantile", scale: float = 1.0) -> torch.Tensor:
    """Token scores ``[B, F' h' w']`` on the transformer's patch grid `grid` (F', h', w') -> a
    binary latent mask ``[B, F, 1, h, w]``: each patch spread over its latent cells, smoothed (3 x 3
    mean), and kept where it reaches its frame's level: the `threshold` quantile (cut "quantile";
    0.9: the top tenth of the frame, as LEDITS++'s edit_threshold), or Otsu's level (cut "otsu":
    the share adapts to the region that stands out; `threshold` unused), that level times `scale` (below 1
    a looser cut: the weaker edge of the region is kept too). A frame with no score at all (no token
    changed) is empty."""
    b, f, _, h, w = latent_shape
    pf, ph, pw = patch
    m = scores.view(b, *grid).repeat_interleave(pf, 1).repeat_interleave(ph, 2).repeat_interleave(pw, 3)
    m = m[:, :f, :h, :w]
    m = F.avg_pool2d(m.reshape(b * f, 1, h, w), 3, 1, 1, count_include_pad=False).view(b, f, h, w)
    if cut == "otsu":
        level = otsu_levels(m.flatten(2))[..., None]
    else:
        level = torch.quantile(m.flatten(2), threshold, dim=-1)[..., None, None]
    peak = m.amax((2, 3), keepdim=True)
    return ((m >= level * scale) & (peak > 0)).float().unsqueeze(2)


def difference_steps(steps: int, window: tuple[float, float] = DIFFERENCE_WINDOW) -> list[int]:
    """The sampling steps (0 = noisiest) whose trajectory latents the difference map probes: one per ten steps, at
    least one and at most `DIFFERENCE_PROBES`, evenly spread over the `window` (fractions) of the steps (so the map
    costs no more per step at 20 or 30 steps than at 50)."""
    lo, hi = (min(steps - 1, int(f * steps)) for f in window)
    n = min(DIFFERENCE_PROBES, max(1, steps // 10), hi - lo + 1)
    return sorted({round(lo + k * (hi - lo) / max(n - 1, 1)) for k in range(n)})


def difference_map(predict_source, predict_edit, latent_for_step, steps: int, rows: torch.Tensor,
                   window: tuple[float, float] = DIFFERENCE_WINDOW) -> torch.Tensor:
    """DiffEdit's map ``[B, F, h, w]``: ``|edit(x_i, i) - source(x_i, i)|`` averaged over the latent
    channels, summed over the probed steps' trajectory latents (`difference_steps`); zero in the
    rows where `rows` is False (neither a prompt token nor the first frame changed: the map is then
    empty whatever the arithmetic's noise)."""
    total = None
    for i in difference_steps(steps, window):
        x = latent_for_step(i)
        d = (predict_edit(x, i) - predict_source(x, i)).abs().float().mean(2)
        total = d if total is None else total + d
    return total * rows.to(total.device, total.dtype)[:, None, None, None]


def from_pixels(mask: torch.Tensor, latent_shape, temporal: int) -> torch.Tensor:
    """ComfyUI MASK ``[N, H, W]`` (or ``[H, W]``; 1 = may change) -> a latent mask ``[B, F, 1, h, w]``
    in 0..1: one pixel frame for latent frame 0 and `temporal` for each later one (the VAE's
    grouping; a single mask frame holds for every frame), max over each group, area-resized. A
    batch of B videos shares the mask, or takes one video's frames after another (N = B x frames)."""
    b, f, _, h, w = latent_shape
    m = mask if mask.dtype == torch.float32 else mask.float()
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or 0 in m.shape:
        raise errors.InputError(f"the mask has shape {tuple(mask.shape)}; a MASK is [frames, height, width] of "
                                "finite values", "Connect a ComfyUI MASK (e.g. from Load Image's mask output).")
    n, frames = m.shape[0], (f - 1) * temporal + 1
    if b > 1 and n == b * frames:  # one mask video per video of the batch
        return torch.cat([from_pixels(part, (1, f, 1, h, w), temporal) for part in m.split(frames)])
    if n == 1:
        groups = [m]
    elif n == frames:
        groups = [m[:1]] + [m[1 + (k - 1) * temporal:1 + k * temporal] for k in range(1, f)]
    else:
        batch = f" ({b} x {frames} for one per video)" if b > 1 else ""
        raise errors.InputError(f"the mask has {n} frames; the video has {frames}{batch} (or give one frame for all)",
                                "Give one mask frame per video frame, or a single one.")

    def shrunk(group: torch.Tensor) -> torch.Tensor:
        """One latent frame's mask [1, h, w]: the max over its pixel frames, area-resized. Each group is
        brought to the latent's size before the next, so a mask of any resolution costs at most one
        extra pixel frame (none for one frame per group), never one copy per latent frame."""
        frame = group[0] if group.shape[0] == 1 else group.amax(0)
        return F.interpolate(frame[None, None], size=(h, w), mode="area")[0]

    per_frame = torch.stack([shrunk(g) for g in groups]).expand(f, -1, -1, -1)  # [F, 1, h, w]
    if not torch.isfinite(per_frame).all():  # a NaN or infinity anywhere in a frame reaches its average
        raise errors.InputError(f"the mask of shape {tuple(mask.shape)} holds NaN or infinite values; a MASK is "
                                "[frames, height, width] of finite values", "Connect a ComfyUI MASK (e.g. from Load "
                                                                            "Image's mask output).")
    return per_frame.clamp(0, 1)[None].expand(b, -1, -1, -1, -1).contiguous()


def grow(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """A latent mask ``[B, F, 1, h, w]`` grown by `cells` latent cells in each frame (the max over a
    ``2 cells + 1`` square; a soft mask keeps its values). An empty mask stays empty, so the source
    prompt still reconstructs exactly."""
    if not cells:
        return mask
    b, f, _, h, w = mask.shape
    k = 2 * cells + 1
    return F.max_pool2d(mask.reshape(b * f, 1, h, w), k, 1, cells).view(b, f, 1, h, w)


def to_pixels(mask: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """A latent mask ``[B, F, 1, h, w]`` as IMAGE frames ``[B * N, H, W, 3]`` (N = (F - 1) temporal + 1):
    what the user sees of the region an edit may change."""
    b, f, _, h, w = mask.shape
    frames = torch.cat([mask[:, :1], mask[:, 1:].repeat_interleave(temporal, 1)], dim=1)[:, :, 0]
    px = frames.repeat_interleave(spatial, 2).repeat_interleave(spatial, 3)  # [B, N, H, W]
    return px.reshape(-1, h * spatial, w * spatial, 1).expand(-1, -1, -1, 3).float().contiguous()


class EditMask:
    """What a guided sample is asked to mask, and (after it) the mask it used: the map from `source`
    (one of `SOURCES`) cut per frame by `cut` (one of `CUTS`: the `threshold` quantile in (0, 1], or
    Otsu's level) times `level`, or `given` (a ComfyUI MASK), then grown by `grow` latent cells; `latent` is
    set by the sampler to the last step's latent mask ``[B, F, 1, h, w]``."""

    def __init__(self, threshold: float = 0.0, given: torch.Tensor | None = None, source: str = "attention",
                 cut: str = "quantile", grow: int = 0, level: float = 1.0):
        if source not in SOURCES:
            raise errors.InputError(f"mask source {source!r} is not one of {', '.join(SOURCES)}",
                                    "Pick 'attention' or 'difference'.")
        if cut not in CUTS:
            raise errors.InputError(f"mask cut {cut!r} is not one of {', '.join(CUTS)}", "Pick 'quantile' or 'otsu'.")
        if given is None and cut == "quantile" and not (math.isfinite(threshold) and 0.0 < threshold <= 1.0):
            raise errors.InputError(f"mask threshold {threshold!r} is not in (0, 1]",
                                    "Use e.g. 0.9 (the edit may change the top tenth of each frame), the 'otsu' "
                                    "cut, or give a MASK.")
        if isinstance(grow, bool) or not isinstance(grow, int) or not 0 <= grow <= MAX_GROW:
            raise errors.InputError(f"mask grow {grow!r} is not a whole number of latent cells from 0 to {MAX_GROW}",
                                    "Use 0 (the mask as cut) or 1-2 cells (8-16 pixels for CogVideoX and Wan).")
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level <= MAX_LEVEL:
            raise errors.InputError(f"mask level {level!r} is not a number in (0, {MAX_LEVEL:g}]",
                                    "Use 1 (the cut as it is), or e.g. 0.75 for a looser cut that keeps the "
                                    "region's weaker edge.")
        self.threshold, self.given, self.source, self.cut, self.latent = threshold, given, source, cut, None
        self.grow, self.level = grow, float(level)

    def cut_map(self, scores: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int],
                latent_shape) -> torch.Tensor:
        """`mask_from_map` with this mask's threshold, cut and level."""
        return mask_from_map(scores, grid, patch, latent_shape, self.threshold, self.cut, self.level)

    def grown(self, mask: torch.Tensor) -> torch.Tensor:
        return grow(mask, self.grow)


def blend(x: torch.Tensor, mask: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``mask * x + (1 - mask) * source``: the edit inside the mask, the trajectory outside."""
    m = mask.to(x.dtype)
    return m * x + (1 - m) * source.to(x.dtype)
