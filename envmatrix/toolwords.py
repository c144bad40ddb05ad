"""What went wrong, in the words of the tool that failed (pip, apt, debootstrap, python, sh).

A failed build ends with the builder's own error, "The command '/bin/sh -c <the whole RUN
line>' returned a non-zero code: 1": true, but it only says *that* the step failed. The cause
is a line the tool printed earlier in that step (pip's "ERROR: No matching distribution found
for onnxruntime==1.99.0"). `build_cause` finds that line; the builder's error is what it falls
back to when the tool said nothing recognisable.

`clean` turns terminal output into plain lines: tools that think they have a terminal print
colour codes and redraw progress bars with carriage returns, which are noise in a report.

`gpu_unavailable` reads the engine's own words when it refuses a container its GPUs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Optional

# CSI (colours, cursor moves, erase line), OSC (window titles, links), then any other
# two-byte escape (charset selection, keypad modes).
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[()][0-9A-Za-z]"
    r"|\x1b[@-Z\\-_]"
)
# The classic builder's header of each step; the failed step is the last one.
_STEP = re.compile(r"^Step \d+/\d+ : ")
_TRACEBACK = "Traceback (most recent call last):"
# pip prints this as ERROR but goes on and succeeds: it is a warning about other packages.
_PIP_NOT_FATAL = ("ERROR: pip's dependency resolver does not currently take into account",)
# pip's lines that name the cause, then those that only point at it (the cause is elsewhere).
_PIP_CAUSES = (
    "ERROR: No matching distribution found for",
    "ERROR: Cannot install",
    "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES",
    "ERROR: Hashes are required in --require-hashes mode",
    "ERROR: In --require-hashes mode",
)
_PIP_POINTERS = (
    "ERROR: Could not find a version that satisfies the requirement",
    "ERROR: ResolutionImpossible",
)
_PIP_GENERIC = (
    "ERROR: Failed building wheel",
    "ERROR: Could not build wheels",
    "ERROR: Failed to build",
    "ERROR: Command errored out",
    "ERROR: Exception:",
)
# pip 23+ lists the versions it skipped (Requires-Python, yanked) before the real error.
_PIP_ASIDES = ("ERROR: Ignored the following",)
_SHELL = re.compile(r"^(?:/bin/)?(?:ba|da)?sh: (?:\d+: |line \d+: )?.+")


def clean(text: str) -> str:
    """Plain text: escape sequences gone, each line as a terminal would last have shown it."""
    text = _ESCAPES.sub("", text.replace("\r\n", "\n"))
    return "\n".join(_last_redraw(line) for line in text.split("\n"))


def _last_redraw(line: str) -> str:
    """A progress bar redraws its line after each '\\r': keep the last non-blank drawing."""
    if "\r" not in line:
        return line
    drawn = [part for part in line.split("\r") if part.strip()]
    return drawn[-1] if drawn else ""


def build_cause(log: str, builder_error: str | None = None) -> str | None:
    """'<tool>: <its first real error line>' from a build log, else 'engine: <builder_error>'.

    Only the failed step's output is read (classic builder's last "Step N/M" onwards): earlier
    steps succeeded, whatever they printed. None when there is neither a tool line nor an error.
    """
    lines = _failed_step(clean(log).splitlines())
    engine_words = clean(builder_error or "").strip()
    # The engine's error is also in the log (as "ERROR: ..."): it is not a tool's line.
    own = {_flat(engine_words), _flat(f"ERROR: {engine_words}")} if engine_words else set()
    found = _tool_line([line for line in lines if _flat(line) not in own])
    if found is not None:
        return found
    return f"engine: {engine_words}" if engine_words else None


def _flat(text: str) -> str:
    return " ".join(text.split())


def _failed_step(lines: list[str]) -> list[str]:
    starts = [index for index, line in enumerate(lines) if _STEP.match(line)]
    return lines[starts[-1]:] if starts else lines


# A runtime alias: Optional, because `str | None` needs Python 3.10 outside annotations.
Finder = Callable[[Sequence[str]], Optional[str]]


def _tool_line(lines: Sequence[str]) -> str | None:
    """The best tool line: the first finder (most telling kind) that finds one wins."""
    for finder in _FINDERS:
        found = finder(lines)
        if found is not None:
            return found
    return None


def _first(lines: Sequence[str], accept: Callable[[str], bool]) -> str | None:
    return next((line.strip() for line in lines if accept(line.strip())), None)


def _pip_line(prefixes: tuple[str, ...]) -> Finder:
    def find(lines: Sequence[str]) -> str | None:
        line = _first(lines, lambda text: text.startswith(prefixes))
        return f"pip: {line}" if line else None
    return find


def _pip_other(lines: Sequence[str]) -> str | None:
    """Any other pip ERROR line that is neither generic nor one of pip's warnings."""
    line = _first(lines, lambda text: text.startswith("ERROR: ")
                  and not text.startswith(_PIP_GENERIC + _PIP_ASIDES + _PIP_NOT_FATAL))
    return f"pip: {line}" if line else None


def _apt_line(lines: Sequence[str]) -> str | None:
    """apt-get and debootstrap both say 'E: ...'; only debootstrap says 'I: ...' as it works."""
    line = _first(lines, lambda text: text.startswith("E: "))
    if line is None:
        return None
    tool = "debootstrap" if any(text.startswith("I: ") for text in lines) else "apt"
    return f"{tool}: {line}"


def _traceback_line(lines: Sequence[str]) -> str | None:
    """A Python traceback's exception line: the first one back at the header's indentation."""
    for index, line in enumerate(lines):
        if line.strip() != _TRACEBACK:
            continue
        indent = len(line) - len(line.lstrip())
        for later in lines[index + 1:]:
            if later.strip() and len(later) - len(later.lstrip()) <= indent:
                return f"python: {later.strip()}"
    return None


def _pip_lowercase(lines: Sequence[str]) -> str | None:
    """pip 23+'s 'error: <slug>' lines (externally-managed-environment, subprocess-exited...)."""
    line = _first(lines, lambda text: re.match(r"^error: [a-z-]+$", text) is not None)
    return f"pip: {line}" if line else None


def _shell_line(lines: Sequence[str]) -> str | None:
    line = _first(lines, lambda text: _SHELL.match(text) is not None)
    return f"sh: {line}" if line else None


# Most telling first: a line that names the cause beats one that points elsewhere, which beats
# "Failed building wheel" (the compiler's error above it is the cause, but has no fixed shape).
_FINDERS: tuple[Finder, ...] = (
    _pip_line(_PIP_CAUSES),
    _apt_line,
    _pip_line(_PIP_POINTERS),
    _traceback_line,
    _pip_other,
    _pip_line(_PIP_GENERIC),
    _pip_lowercase,
    _pip_line(_PIP_ASIDES),
    _shell_line,
)


# What engines say when a container asks for GPUs they cannot give, lower-cased: docker without
# the NVIDIA toolkit ('could not select device driver "" with capabilities: [[gpu]]'), CDI
# ('unresolvable CDI devices nvidia.com/gpu=all'), the NVIDIA hook ('nvidia-container-cli:
# initialization error: nvml error: driver not loaded', '... requirement error: unsatisfied
# condition: cuda>=12.4'), and a missing device node.
GPU_ERROR_MARKERS = (
    "could not select device driver",
    "cdi device",
    "unresolvable cdi",
    "nvidia-container-cli",
    "nvidia-container-runtime",
    "nvml error",
    'error gathering device information while adding custom device "/dev/nvidia',
)


def gpu_unavailable(engine_message: str) -> bool:
    """Whether the engine's refusal of a container is about its GPUs (status `no_gpu`)."""
    text = engine_message.lower()
    return any(marker in text for marker in GPU_ERROR_MARKERS)
