"""The reference-attention method the pack used before issue 34, kept here only as the oracle its
replacement is tested against: a whole reference pass first, keeping the K/V of every chosen layer,
then the sample pass reading them. It drives the product's own processors through the same
`vidinv.attention.Recording` / `Injection` interface, so swapping it in for `attention.guided`
(``monkeypatch.setattr(attention, "guided", twopass.guided)``) runs the old schedule through the
pipeline, the native patch and every family; `HeldKV` counts what each schedule keeps alive."""
from __future__ import annotations

import contextlib
import weakref

import torch

from vidinv import attention as vidinv_attention


def guided_for(attention):
    """`attention.guided` with the two-pass schedule, for a copy of the `vidinv.attention` module (the
    native path loads the pack as a package of its own under ComfyUI)."""

    @contextlib.contextmanager
    def guided(channel, layers, reference, rows, weight, text=False, injection=attention.Injection, **fields):
        """The reference call runs to its last chosen layer (then stops), every layer's K/V kept in a
        dict; then the sample call reads them."""
        layers = frozenset(layers)
        kv = {}

        def keep(name, pair):
            kv[name] = pair
            if len(kv) == len(layers):
                raise attention.StopReference

        with channel.using(attention.Recording(layers, keep, text)):
            try:
                reference()
            except attention.StopReference:
                pass
        if set(kv) != set(layers):
            raise RuntimeError(f"the reference pass recorded {len(kv)} of {len(layers)} layers")
        with channel.using(injection(layers, rows, weight, text, kv.__getitem__, **fields)) as state:
            yield state

    return guided


guided = guided_for(vidinv_attention)


class HeldKV:
    """Counts the reference K/V alive while a sample call injects: every K/V pair handed over by a
    reference call is watched (a weak reference to its key tensor's storage), and each time the
    sample call takes a layer the number still alive is appended to `alive`. Install with
    ``with HeldKV() as held:`` around guided calls of either schedule."""

    def __init__(self, attention=vidinv_attention):
        self.attention = attention
        self.watched: list[tuple[weakref.ref, weakref.ref]] = []  # (key storage, value storage) per pair
        self.alive: list[int] = []  # pairs alive at each take
        self.alive_bytes: list[int] = []  # bytes of their storages
        self.stack = contextlib.ExitStack()

    def count(self) -> int:
        return sum(k() is not None for k, _ in self.watched)

    def bytes(self) -> int:
        live = {id(st): st.nbytes() for pair in self.watched for st in (pair[0](), pair[1]()) if st is not None}
        return sum(live.values())

    def __enter__(self):
        attention = self.attention
        original_record = attention.Recording.record
        original_reference = attention.Injection.reference
        held = self

        def record(rec, name, k, v, text_len=0):
            held.watched.append((weakref.ref(k.untyped_storage()), weakref.ref(v.untyped_storage())))
            return original_record(rec, name, k, v, text_len)

        def reference(inj, name):
            out = original_reference(inj, name)
            held.alive.append(held.count())
            held.alive_bytes.append(held.bytes())
            return out

        attention.Recording.record, attention.Injection.reference = record, reference
        self.stack.callback(setattr, attention.Recording, "record", original_record)
        self.stack.callback(setattr, attention.Injection, "reference", original_reference)
        return self

    def __exit__(self, *exc):
        self.stack.close()
        return False


def storage_weakref_works() -> bool:
    """Whether a tensor's storage can be watched by a weak reference (PyTorch keeps one Python
    object per storage)."""
    t = torch.zeros(4)
    r = weakref.ref(t.untyped_storage())
    alive = r() is not None
    del t
    return alive and r() is None
