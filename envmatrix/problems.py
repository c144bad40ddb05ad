"""The problem vocabulary: what is wrong with a matrix, where, and how to fix it.

Every check (the pydantic models in `spec`, the expansion in `expand`, the cross-checks in
`config`) reports `Problem`s carrying a key path such as `("environments", 1, "matrix",
"exclude", 0)`; `config` turns the path into a file and line. The helpers that word a message
(`format_path`, `did_you_mean`, `show`, `kind_of`) live here so every message reads alike.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from envmatrix.errors import ConfigError

KeyPath = tuple[Union[str, int], ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the matrix, at a key path, with the fix."""

    path: KeyPath
    message: str
    fix: str
    at_key: bool = False  # point at the key's line (unknown keys) rather than its value's


class PlanError(ConfigError):
    """Problems found before file and line are known; config re-raises them with both."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"{format_path(p.path)}: {p.message} Fix: {p.fix}"
                                   for p in self.problems))


def format_path(path: KeyPath) -> str:
    """`("environments", 1, "packages", "numpy")` -> `environments[1].packages.numpy`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text or "(top level)"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'base'?)` or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: Any) -> str:
    """A value as safe, short text for a message: repr escapes newlines and control bytes."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"the text {show(value)}"


def unique(problems: Sequence[Problem]) -> list[Problem]:
    """Problems in order, each (path, message) once."""
    seen, out = set(), []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out
