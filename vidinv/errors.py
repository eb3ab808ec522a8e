"""Errors that speak to the user: what was given, what is needed, how to fix it."""
import json
import math


class InputError(ValueError):
    """Bad input, found before any heavy work starts. ``str(err)`` is the whole message."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}. {fix}".strip() if fix else problem)


def shorten(text, limit: int = 40) -> str:
    """`text` for an error message: at most `limit` characters, unprintable ones shown as '?' (a
    hostile field is never echoed whole, nor grown by escapes)."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_kind(v) -> str:
    """What a decoded JSON value is, in words ("a list", "null", ...), for messages about files."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


def is_number(v) -> bool:
    """A finite JSON number (booleans are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_count(v) -> bool:
    """A whole number >= 0 (booleans are not)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def describe_value(v) -> str:
    """A decoded JSON value for a message: its kind and its text, shortened."""
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return f"{json_kind(v)} ({shorten(text)})"
