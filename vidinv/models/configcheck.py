"""A model folder's configs are untrusted input: one check for every family, run before any module
is built (a config's numbers decide what diffusers allocates: ``num_layers`` 1e9 builds blocks until
the server stops, ``rope_max_seq_len`` 1e10 asks for 80 GB).

A family describes what it reads as data: per config file, each field's type and range (`Field`),
and what the sizes promise about the weights (`Promise`: a tensor's shape; `Blocks`: how many
numbered blocks). `check_configs` reads the configs, `check_weights` the safetensors *headers* (names, dtypes and
shapes; no weight is read), so a config that would build something other than its weights is refused
in milliseconds whatever its numbers. Messages name the file, the field, what was found and what is
expected. Pure: no diffusers, no torch."""
from __future__ import annotations

import dataclasses
import json
import re
import struct
from pathlib import Path
from typing import Callable

from .. import errors

HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own limit on a header
OPTIONAL_PREFIXES = ("vision_model.",)  # CLIP vision weights are saved with or without it, by transformers' version
FIX = "The folder's config does not describe its weights; download the model folder again (or restore its config)."
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: `kind` "int" (a whole number), "number", "bool", "str", "ints" / "numbers"
    (lists of them); `lo` / `hi` the range of a number or of each list item; `length` a list's length
    (a number, or the name of another field of the same file); `null` whether JSON null is allowed;
    `default` what the library uses when the key is absent (absent keys are fine: the library's
    default applies); `positive` for numbers that must be > 0."""
    kind: str
    lo: float | None = None
    hi: float | None = None
    null: bool = False
    length: int | str | None = None
    default: object = _MISSING
    positive: bool = False


def count(lo: int = 1, hi: int = 1 << 16, **kw) -> Field:
    return Field("int", lo, hi, **kw)


def number(lo: float | None = None, hi: float | None = None, **kw) -> Field:
    return Field("number", lo, hi, **kw)


@dataclasses.dataclass(frozen=True)
class Promise:
    """A tensor the weights of `part` must hold, with the shape the config's `fields` make."""
    part: str
    tensor: str
    shape: tuple
    fields: str


@dataclasses.dataclass(frozen=True)
class Blocks:
    """`part`'s weights hold exactly `value` numbered blocks ``prefix.0 ... prefix.(value-1)``."""
    part: str
    prefix: str
    value: int
    field: str


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a family reads of a folder: `files` maps a config path (relative to the folder) to its
    fields; `promises(configs)` lists what the configs' sizes promise about the weights (the configs
    are already type- and range-checked; absent keys carry their defaults); `extra(configs, refuse)`
    cross-checks between files."""
    files: dict
    promises: Callable[[dict], list] = lambda cfg: []
    extra: Callable[[dict, Callable], None] = lambda cfg, refuse: None


def _describe(v) -> str:
    return errors.describe_value(v) if not isinstance(v, (list, dict)) else errors.shorten(json.dumps(v), 60)


def _kind_ok(kind: str, v) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return errors.is_number(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    raise ValueError(kind)


def _what(f: Field, length=None) -> str:
    names = {"int": "a whole number", "number": "a finite number", "bool": "true or false", "str": "a string",
             "ints": "whole numbers", "numbers": "finite numbers"}
    base = names[f.kind]
    if f.kind in ("ints", "numbers"):
        base = f"a list of {length} {base}" if length is not None else f"a list of {base}"
    rng = ""
    if f.lo is not None and f.hi is not None:
        rng = f" from {f.lo:g} to {f.hi:g}"
    elif f.lo is not None:
        rng = f" >= {f.lo:g}"
    elif f.positive:
        rng = " > 0"
    return base + rng + (" (or null)" if f.null else "")


def check_fields(cfg: dict, fields: dict, where: str) -> dict:
    """`cfg`'s fields against `fields`; returns the config with defaults filled in. Raises InputError
    naming `where` (the file), the field, what was found and what is expected."""
    name = cfg.get("_class_name", "")  # diffusers' own rule: a class name, or a list of them (custom pipelines)
    if not (isinstance(name, str) or isinstance(name, list) and all(isinstance(x, str) for x in name)):
        raise errors.InputError(f"{where}: _class_name is {_describe(name)}, expected a class name (a string)", FIX)
    out = dict(cfg)
    for key, f in fields.items():
        if key not in cfg:
            if f.default is not _MISSING:
                out[key] = f.default
            continue
        v = cfg[key]
        if v is None and f.null:
            continue
        length = cfg.get(f.length) if isinstance(f.length, str) else f.length
        if isinstance(f.length, str) and not errors.is_count(length):
            length = None
        if f.kind in ("ints", "numbers"):
            item = "int" if f.kind == "ints" else "number"
            ok = isinstance(v, list) and all(_kind_ok(item, x) and _in_range(f, x) for x in v) \
                and (length is None or len(v) == length)
        else:
            ok = _kind_ok(f.kind, v) and (f.kind not in ("int", "number") or _in_range(f, v))
        if not ok:
            raise errors.InputError(f"{where}: {key} is {_describe(v)}, expected {_what(f, length)}", FIX)
    return out


def _in_range(f: Field, x) -> bool:
    return (f.lo is None or x >= f.lo) and (f.hi is None or x <= f.hi) and (not f.positive or x > 0)


# ----------------------------------------------------------------------------- safetensors headers

def read_header(path: Path) -> dict:
    """Tensor name -> shape from a safetensors file's header, without reading any weight."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        n = struct.unpack("<Q", head)[0]
        if n > HEADER_LIMIT:
            raise ValueError(f"its header claims {n} bytes")
        raw = fh.read(n)
    if len(raw) != n:
        raise ValueError("the file ends inside its header")
    table = json.loads(raw)
    if not isinstance(table, dict):
        raise ValueError("its header is not a JSON object")
    return {k: tuple(v.get("shape", ())) for k, v in table.items() if k != "__metadata__" and isinstance(v, dict)}


def part_tensors(folder: Path, part: str) -> dict | None:
    """Every tensor name -> shape of the safetensors files in ``folder/part`` (all variants and shards
    together); None when the part has no safetensors file (``.bin`` weights are not read here)."""
    d = folder / part
    files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
    if not files:
        return None
    shapes: dict = {}
    for f in files:
        try:
            for name, shape in read_header(f).items():
                shapes[name] = shape
                for prefix in OPTIONAL_PREFIXES:
                    if name.startswith(prefix):
                        shapes[name[len(prefix):]] = shape
        except (OSError, ValueError) as err:
            raise errors.InputError(f"{folder.name!r}: {part}/{f.name} is not a readable safetensors file ({err})",
                                    "Download the model folder again.") from err
    return shapes


def block_count(names, prefix: str) -> int:
    """How many numbered blocks ``prefix.N.`` the names hold (the largest N plus one)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for n in names if (m := pat.match(n))]
    return max(found) + 1 if found else 0


# ----------------------------------------------------------------------------- the check

def read_config(folder: Path, rel: str) -> dict | None:
    """A config file as a JSON object; None when it is absent. Refuses a file that is not JSON or not
    an object, naming it."""
    path = folder / rel
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise errors.InputError(f"{folder.name!r}: {rel} is not valid JSON ({errors.shorten(str(err), 80)})",
                                "Download the model folder again (or restore that file).") from err
    if not isinstance(data, dict):
        raise errors.InputError(f"{folder.name!r}: {rel} is {errors.json_kind(data)}, not a JSON object",
                                "Download the model folder again (or restore that file).")
    return data


def check_configs(folder, spec: Spec) -> dict:
    """Check a model folder's configs against `spec` before anything is built: every field's type and
    range, then the family's cross-checks. Returns the configs (relative path -> dict with defaults
    filled in; absent files left out) for `check_weights`."""
    folder = Path(folder)
    configs = {}
    for rel, fields in spec.files.items():
        cfg = read_config(folder, rel)
        if cfg is not None:
            configs[rel] = check_fields(cfg, fields, f"{folder.name!r}: {rel}")

    def refuse(problem: str, fix: str = FIX):
        raise errors.InputError(f"{folder.name!r}: {problem}", fix)

    spec.extra(configs, refuse)
    return configs


def check_weights(folder, spec: Spec, configs: dict) -> None:
    """The sizes the checked `configs` promise against the weights' safetensors headers (a part
    without safetensors files is not compared)."""
    folder = Path(folder)
    headers: dict = {}
    for p in spec.promises(configs):
        if p.part not in headers:
            headers[p.part] = part_tensors(folder, p.part)
        names = headers[p.part]
        if names is None:
            continue
        if isinstance(p, Blocks):
            got = block_count(names, p.prefix)
            problem = None if got == p.value else (
                f"{p.part}/config.json has {p.field} {p.value}, but the {p.part} weights hold {got} "
                f"({p.prefix}0 ... {p.prefix}{max(got - 1, 0)})")
        elif p.tensor not in names:
            problem = f"the {p.part} weights hold no tensor {p.tensor!r}, which its config ({p.fields}) needs"
        elif tuple(names[p.tensor]) != tuple(p.shape):
            problem = (f"{p.part}/config.json ({p.fields}) makes {p.tensor} of shape {list(p.shape)}, but the weights "
                       f"hold {list(names[p.tensor])}")
        else:
            problem = None
        if problem:
            raise errors.InputError(f"{folder.name!r}: {problem}", FIX)


# ----------------------------------------------------------------------------- parts several families share

SCHEDULER_FIELDS = {"num_train_timesteps": count(1, 100_000, default=1000)}

T5_FIELDS = {  # transformers' T5 / UMT5 encoder config
    "d_model": count(1, 65536), "num_layers": count(1, 1024), "num_heads": count(1, 1024), "d_kv": count(1, 4096),
    "d_ff": count(1, 1 << 20), "vocab_size": count(1, 1 << 22), "relative_attention_num_buckets": count(1, 1 << 16),
}

CLIP_FIELDS = {  # transformers' CLIP vision config (Stable Video Diffusion, Wan image-to-video)
    "hidden_size": count(1, 65536), "image_size": count(1, 4096), "patch_size": count(1, 4096),
    "num_hidden_layers": count(1, 1024), "num_channels": count(1, 64, default=3),
    "projection_dim": count(1, 65536), "intermediate_size": count(1, 1 << 20),
}


def t5_promises(cfg: dict, part: str = "text_encoder") -> list:
    """What a T5-style encoder config promises about its weights (only the fields it has)."""
    out = []
    if "num_layers" in cfg:
        out.append(Blocks(part, "encoder.block.", cfg["num_layers"], "num_layers"))
    if {"num_heads", "d_kv", "d_model"} <= cfg.keys():
        out.append(Promise(part, "encoder.block.0.layer.0.SelfAttention.q.weight",
                           (cfg["num_heads"] * cfg["d_kv"], cfg["d_model"]), "num_heads x d_kv, d_model"))
    return out


def clip_promises(cfg: dict, part: str = "image_encoder", projection: bool = False) -> list:
    """What a CLIP vision config promises about its weights (only the fields it has)."""
    out = []
    if "num_hidden_layers" in cfg:
        out.append(Blocks(part, "encoder.layers.", cfg["num_hidden_layers"], "num_hidden_layers"))
    if {"hidden_size", "patch_size"} <= cfg.keys():
        out.append(Promise(part, "embeddings.patch_embedding.weight",
                           (cfg["hidden_size"], cfg["num_channels"], cfg["patch_size"], cfg["patch_size"]),
                           "hidden_size, num_channels, patch_size"))
    if {"hidden_size", "patch_size", "image_size"} <= cfg.keys():
        out.append(Promise(part, "embeddings.position_embedding.weight",
                           ((cfg["image_size"] // cfg["patch_size"]) ** 2 + 1, cfg["hidden_size"]),
                           "image_size, patch_size, hidden_size"))
    if projection and {"hidden_size", "projection_dim"} <= cfg.keys():
        out.append(Promise(part, "visual_projection.weight", (cfg["projection_dim"], cfg["hidden_size"]),
                           "projection_dim, hidden_size"))
    return out
