"""Visible progress: which stage, which image, which cell, and the time since start."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape


class Progress:
    """Prints one line per event, prefixed with the seconds elapsed since the run began."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, stage: str, message: str, *, style: str = "") -> None:
        # User-controlled names (ids, paths) pass through escape() so they are never read as markup.
        stamp = f"[dim]{self.elapsed():7.1f}s[/dim]"
        text = f"{stamp} [bold]{escape(stage):<7}[/bold] {escape(message)}"
        self.console.print(f"[{style}]{text}[/{style}]" if style else text, soft_wrap=True)

    def warn(self, stage: str, message: str) -> None:
        self(stage, message, style="yellow")

    def fail(self, stage: str, message: str) -> None:
        self(stage, message, style="red")
