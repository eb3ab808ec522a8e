"""The family registry: the one place that knows which model families exist. A model value and a
trajectory name their family (``.family``); everything else asks this registry for the family
object (`vidinv.family.Family`) instead of comparing names. A new family is one module under
`vidinv.models` with a ``FAMILY`` object, listed here."""
from __future__ import annotations

from . import errors
from .family import Family
from .models import cogvideox, native, svd, wan

FAMILIES: dict[str, Family] = {f.name: f for f in (cogvideox.FAMILY, svd.FAMILY, wan.FAMILY, native.FAMILY)}
DEFAULT = cogvideox.FAMILY.name  # model values and trajectory files from before the field are CogVideoX


def name_of(value) -> str:
    """The family name a model value or trajectory carries."""
    return getattr(value, "family", DEFAULT)


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise errors.InputError(f"model family {name!r} is not one of {', '.join(FAMILIES)}",
                                "Update the pack, or use a model of a family it knows.")
    return FAMILIES[name]


def of(value) -> Family:
    """The family of a model value or trajectory."""
    return get(name_of(value))


def display_name(name: str) -> str:
    return FAMILIES[name].display_name if name in FAMILIES else name


def require(model, name: str, node: str, fix: str) -> Family:
    """Refuse a model of another family on a node of family `name`, before any work starts. The hint
    names the model's own family's nodes (`Family.own_nodes`), then `fix` (how to get a model of
    family `name`)."""
    got = name_of(model)
    if got != name:
        own = FAMILIES[got].own_nodes + " " if got in FAMILIES else ""
        raise errors.InputError(f"{node} works on {display_name(name)} models only; {getattr(model, 'name', '?')!r} "
                                f"is a {display_name(got)} model, not {display_name(name)}", own + fix)
    return FAMILIES[name]
