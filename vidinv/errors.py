"""Errors that speak to the user: what was given, what is needed, how to fix it."""


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
