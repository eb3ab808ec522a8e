"""How a host follows a long computation: ``before_call()`` runs before every model call (ComfyUI
checks for interrupts there, so an interrupt lands mid-step), ``after_step(i, total, info)`` after
every step (progress bars, previews). No ComfyUI here; `nodes.host.Progress` is the host's."""
from __future__ import annotations

from typing import Callable


class Hooks:
    """No-op hooks; hosts override what they need."""

    def before_call(self) -> None:
        pass

    def after_step(self, i: int, total: int, info: dict) -> None:
        pass


def guarded(fn: Callable, hooks: Hooks) -> Callable:
    """`fn` with ``hooks.before_call()`` in front of every call (a denoiser or a reference pass)."""
    def wrapped(*args, **kwargs):
        hooks.before_call()
        return fn(*args, **kwargs)
    return wrapped
