"""Markdown and number formats every part of the report shares.

Every user-controlled string (environment, workload and cell names, reasons, log tails) goes
through `md()`, `code()` or a code fence before it reaches the markdown.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tabulate import tabulate

from envmatrix.analysis.parity import CellParity
from envmatrix.analysis.stats import FASTER, INVALID, SLOWER, UNPAIRED, Verdict, method_phrase

DASH = "–"
PROVIDER_DISPLAY = {"cpu": "CPU", "openvino": "OpenVINO", "cuda": "CUDA",
                    "tensorrt": "TensorRT", "dnnl": "oneDNN", "rocm": "ROCm",
                    "coreml": "CoreML"}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")


def md(text: Any) -> str:
    """Text safe inside a GitHub markdown paragraph or table cell (user-controlled names)."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\r\n|\r|\n", "<br>", s)


def code(text: str) -> str:
    """A setting's words as inline code; text outside the id alphabet is escaped instead."""
    return f"`{text}`" if re.fullmatch(r"[A-Za-z0-9._=+/ -]+", text) else md(text)


def fence(text: str, lang: str = "") -> str:
    """A fenced code block that no backtick run inside the text can close early."""
    runs = [len(m) for m in re.findall(r"`+", text)]
    ticks = "`" * max(3, max(runs, default=0) + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def details(summary: str, body: str) -> str:
    """A collapsed block (GitHub renders <details>); summary must already be escaped."""
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[DASH if c is None or c == "" else c for c in row] for row in rows]
    return tabulate(rows, headers=list(headers), tablefmt="github", disable_numparse=True)


def shell_join(argv: Sequence[str]) -> str:
    """shlex.join, except that "$PWD/..." stays expandable by the shell."""
    return " ".join(f'"{a}"' if a.startswith("$PWD/") else shlex.quote(a) for a in argv)


def fmt_ms(seconds: float | None) -> str | None:
    """Milliseconds with about three significant digits."""
    return None if seconds is None else _three_digits(seconds * 1000.0)


def fmt_rate(per_s: float | None) -> str | None:
    """Samples per second with about three significant digits."""
    return None if per_s is None or not math.isfinite(per_s) else _three_digits(per_s)


def _three_digits(x: float) -> str:
    digits = 0 if x >= 100 else 1 if x >= 10 else 2 if x >= 1 else 3
    return f"{x:.{digits}f}"


def fmt_pct(ratio: float) -> str:
    return f"{(ratio - 1.0) * 100:+.1f}%"


def fmt_ratio(ratio: float | None) -> str | None:
    return None if ratio is None or not math.isfinite(ratio) else fmt_pct(ratio)


def fmt_bytes(size: float | None) -> str | None:
    return None if size is None else f"{size / 1e6:.0f} MB"


def fmt_number(value: float | None, spec: str) -> str | None:
    """`value` in the format `spec`; None (a dash in tables) when missing or not finite."""
    return None if value is None or not math.isfinite(value) else format(value, spec)


def fmt_change(v: Verdict, metric: str = "p50") -> str | None:
    ci = v.ratios.get(metric)
    if ci is None:
        return None
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return f"{fmt_pct(ci.ratio)} [no interval]"  # too few rounds: the notes say why
    return f"{fmt_pct(ci.ratio)} [{fmt_pct(ci.low)}, {fmt_pct(ci.high)}]"


def provider_name(short: str) -> str:
    return PROVIDER_DISPLAY.get(short, short)


def verdict_words(word: str, tail: str | None, decided_by: str | None = "p50") -> str:
    """The verdict column: `**faster** / no significant change` (p50 / p99), or the
    samples/s verdict of two cells at different loads: `**faster** (samples/s)`."""
    if word.startswith("baseline"):
        return word
    if word == INVALID:
        return f"**{INVALID}**"
    shown = f"**{word}**" if word in (FASTER, SLOWER) else word
    if decided_by == "throughput":
        return f"{shown} (samples/s)"
    return f"{shown} / {tail}"


def verdict_methods(verdicts: Sequence[Verdict]) -> str:
    """Which test(s) the verdicts used, with how many cells each where they differ."""
    used = [v.method for v in verdicts if v.method]
    methods = list(dict.fromkeys(used)) or [UNPAIRED]
    if len(methods) == 1:
        return method_phrase(methods[0])
    return "; ".join(f"{method_phrase(m)} ({used.count(m)} cells)" for m in methods)


def _fmt_g(x: float | None) -> str | None:
    return None if x is None else f"{x:.3g}"


def parity_tables(parities: Mapping[str, CellParity], *, first_column: str,
                  sides: tuple[str, str] = ("baseline", "candidate")) -> list[str]:
    """Per output of each compared cell: differences, tolerances, result; worst elements.

    Shared by the report (candidate vs baseline) and compare (run B vs run A).
    """
    rows = []
    for cid, p in parities.items():
        if not p.outputs:
            rows.append([md(cid), DASH, None, None, None, None, None, None,
                         f"{p.status}: {md(p.reason)}"])
        for o in p.outputs:
            rows.append([md(cid), md(o.name), md(o.dtype), _fmt_g(o.max_abs), _fmt_g(o.max_rel),
                         None if o.cosine is None else f"{o.cosine:.6f}",
                         f"{o.rtol:.0e}" if o.rtol else "exact", f"{o.atol:.1e}" if o.atol else
                         "exact", "pass" if o.passed else f"**FAIL**: {md(o.reason)}"])
    headers = (first_column, "output", "dtype", "max abs diff", "max rel diff", "cosine",
               "rtol", "atol", "result")
    lines = [table(headers, rows), ""]
    for cid, p in parities.items():
        for o in p.outputs:
            if o.worst:
                worst = table(("index", *sides, "abs diff"),
                              [[str(list(w.index)), f"{w.baseline:.7g}", f"{w.candidate:.7g}",
                                f"{w.abs_diff:.3g}"] for w in o.worst])
                lines += [details(f"worst elements: {md(cid)} / {md(o.name)}", worst), ""]
    return lines
