"""Counting tensor memory where no allocator counts it: on the CPU (torch's CPU allocator keeps no peak)
and on the meta device (nothing is allocated at all).

`LiveBytes` is a `TorchDispatchMode`: every new storage an operator returns while it is active (not
one of its inputs' storages: views, in-place and out= results are not new) is counted from the moment
it appears until PyTorch frees it (a weak reference on the storage), and the peak of the sum is kept. What it sees: tensors made by ATen operators during the block, in every thread that runs
inside it (the pack's reference call runs in a helper thread that inherits the caller's dispatch modes,
`vidinv.attention.torch_thread_state`). What it does not see: tensors that existed before (weights,
inputs), scratch memory inside a kernel, and allocator overhead (rounding, caching, fragmentation).

`flash_attention()` makes ``F.scaled_dot_product_attention`` the fused kernel's shape of computation on
every device (output and log-sum-exp only): on the meta device PyTorch otherwise takes the math path,
which materialises the ``[L_q, L_k]`` attention matrix that no GPU kernel at these sizes keeps.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages created while active (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}  # storage address (StorageImpl) -> bytes
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st._cdata
                if key not in self.live and key not in inputs and st.nbytes() > 0:  # new, not a view or in place
                    self.live[key] = st.nbytes()
                    self.now += st.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(st, self._free, key)
        return out


@contextlib.contextmanager
def flash_attention():
    """``F.scaled_dot_product_attention`` (no mask, no dropout) through the fused CPU kernel's operator,
    which keeps only the output and the log-sum-exp (it has a meta kernel too)."""
    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or dropout_p or is_causal or enable_gqa:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
