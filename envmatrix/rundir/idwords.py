"""The words that name a cell's settings: one rule for ids and for what reads them back.

`config.expand` makes environment and cell ids with these words (`t2`, `opt-all`,
`load_config-throughput`); the report labels cells, columns and plot files with the same
words, from a run directory alone, without importing the config loader.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from envmatrix.grammar import PROVIDER_NAMES
from envmatrix.rundir.plan import Cell, Knobs

# Runtime package -> short tag used in generated ids (order: the tags' order inside an id).
RUNTIME_TAGS: tuple[tuple[str, str], ...] = (
    ("onnxruntime", "ort"),
    ("onnxruntime-gpu", "ortgpu"),
    ("onnxruntime-openvino", "ortov"),
    ("onnxruntime-directml", "ortdml"),
    ("onnxruntime-rocm", "ortrocm"),
    ("torch", "torch"),
)
# The fields of `Knobs` a matrix axis may vary (session settings are named one by one).
KNOB_FIELDS = ("threads", "cpuset", "memory_limit", "concurrency")
# Id part of each knob: a prefix, then the value's word (below). Session settings keep their
# matrix order; config entries and provider options follow, by name.
KNOB_PREFIX = {
    "threads": "t", "cpuset": "cpu", "memory_limit": "mem", "concurrency": "c",
    "session.graph_optimization": "opt-", "session.intra_op_threads": "intra",
    "session.inter_op_threads": "inter", "session.execution_mode": "",
    "session.enable_mem_pattern": "mempat-", "session.enable_cpu_mem_arena": "arena-",
}
_WORDS = {"sequential": "seq", "parallel": "par"}
_WORD = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
WORD_MAX = 24
FILE_SLUG_MAX = 60  # characters of a name kept in a file name, before its hash
WORKLOAD_FIELDS = ("backend", "batch")  # what tells the workloads of one network apart


def slug(text: str) -> str:
    """Lower-case, every run of other characters one '-', no separator at either end."""
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    text = re.sub(r"[._-]{2,}", lambda m: m.group()[0], text)
    return text.strip("._-")


def file_slug(text: str) -> str:
    """A file-name-safe, collision-free form of a name read back from a run (plot file names):
    the name itself when it is a short slug already (every id config accepts), else its slug
    and 8 hex of its hash, so two names never share a file."""
    safe = slug(text)[:FILE_SLUG_MAX]
    if safe == text:
        return safe
    return f"{safe or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def provider_slug(provider: str) -> str:
    """`openvino` stays; a full name like `MIGraphXExecutionProvider` becomes `migraphx`."""
    if provider in PROVIDER_NAMES:
        return provider
    return slug(provider.removesuffix("ExecutionProvider"))


# -- knobs ----------------------------------------------------------------------------------


def knob_values(knobs: Knobs, options: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """A cell's settings by dotted name (threads, session.<setting>, session.config.<key>,
    provider_options.<option> of the cell's provider): ids, report columns, results.csv."""
    out: dict[str, Any] = {k: getattr(knobs, k) for k in KNOB_FIELDS
                           if getattr(knobs, k) is not None}
    for name, value in knobs.session:
        if name == "config":
            out.update({f"session.config.{k}": v for k, v in sorted(value.items())})
        else:
            out[f"session.{name}"] = value
    out.update({f"provider_options.{k}": v for k, v in sorted(options)})
    return out


def knob_word(value: Any, exact: bool = False) -> str:
    """A value as an id word: on/off, a number, a short lower-case word; a mapping (OpenVINO's
    load_config) by its leaf values (`throughput_2`) unless `exact`; else h + 7 hex."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        text = "" if exact else "_".join(_leaves(value)).lower()
    else:
        text = str(value).lower().replace(",", "_")
    text = _WORDS.get(text, text)
    if text and len(text) <= WORD_MAX and _WORD.fullmatch(text):
        return text
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    return "h" + digest[:7]


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _leaves(value[key])]
    return ["on" if value is True else "off" if value is False else str(value)]


def knob_part(name: str, value: Any, exact: bool = False) -> str:
    """`t1`, `opt-all`, `seq`, `arena-off`, `intra_op.allow_spinning-0`, `num_streams-2`,
    `load_config-throughput` (`exact`: a mapping by its hash, when leaf words collide)."""
    if name in KNOB_PREFIX:
        return KNOB_PREFIX[name] + knob_word(value, exact)
    short = name.split(".", 1)[1]
    if short.startswith("config."):
        short = short[len("config."):].removeprefix("session.")
    return f"{short}-{knob_word(value, exact)}"


def knob_label(name: str) -> str:
    """A setting's name where it has no value to show (`num_of_threads default`): a provider
    option by its own name, as in cell ids; the others by their dotted name."""
    return name.split(".", 1)[1] if name.startswith("provider_options.") else name


def varied_knobs(values: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names whose value (or presence) differs between an environment's variants, in id order."""
    names = list(dict.fromkeys(n for v in values for n in v))
    varied = [n for n in names if len({json.dumps(v.get(n), sort_keys=True) for v in values}) > 1]
    return knob_order(varied)


def knob_order(names: Iterable[str]) -> list[str]:
    """Setting names once each, in id order: KNOB_PREFIX's, then the others by name."""
    order = list(KNOB_PREFIX)
    return sorted(set(names), key=lambda n: (order.index(n) if n in order else len(order), n))


def knob_names(cells: Sequence[Cell]) -> list[str]:
    """Settings the plan varies (threads, session.*, provider_options.*): those that differ
    between cells of one environment, workload and provider, as in the cell ids."""
    return list(_knob_names(tuple(cells)))


@functools.lru_cache(maxsize=8)  # every row of results.csv asks for the same plan's names
def _knob_names(cells: tuple[Cell, ...]) -> tuple[str, ...]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        key = (c.environment.id, c.workload.name, c.provider)
        groups.setdefault(key, []).append(knob_values(c.knobs, c.provider_options))
    return tuple(knob_order(n for values in groups.values() for n in varied_knobs(values)))


# -- what sets a cell apart ------------------------------------------------------------------


def setting_parts(cells: Sequence[Cell], cell: Cell,
                  fields: Sequence[str] = ("backend", "batch", "provider")) -> list[str]:
    """What sets a cell apart among `cells`, as short words: `torch`, `b8`, `openvino`,
    then the knobs varied among its workload's cells on its provider, as in cell ids (`c2`,
    `load_config-throughput`; provider options and session settings belong to one provider
    and one backend, so a cpu cell is not "load_config default" next to an OpenVINO one)."""
    parts = []
    varied = [f for f in fields if len({_field(c, f) for c in cells}) > 1]
    for f in varied:
        parts.append(_setting_word(f, _field(cell, f)))
    values = [knob_values(c.knobs, c.provider_options) for c in cells
              if (c.workload.name, c.provider) == (cell.workload.name, cell.provider)]
    own = knob_values(cell.knobs, cell.provider_options)
    # a knob the cell leaves unset is the runtime's default: not a word of its own here
    parts += [knob_part(name, own[name]) for name in varied_knobs(values)
              if own.get(name) is not None]
    return parts


def setting_diff(cell: Cell, ref: Cell) -> list[str]:
    """What differs in a cell from a reference cell, as `setting_parts` words: `torch`, `b8`,
    `c2 load_config-throughput`. Provider options are compared only on one provider and
    session settings only on one backend (they belong to them)."""
    fields = [f for f in ("backend", "batch", "provider") if _field(cell, f) != _field(ref, f)]
    parts = [_setting_word(f, _field(cell, f)) for f in fields]
    own = knob_values(cell.knobs, cell.provider_options)
    theirs = knob_values(ref.knobs, ref.provider_options)
    for name in knob_order(set(own) | set(theirs)):
        if (own.get(name) == theirs.get(name)
                or (name.startswith("provider_options.") and "provider" in fields)
                or (name.startswith("session.") and "backend" in fields)):
            continue
        value = own.get(name)
        parts.append(f"{knob_label(name)} default" if value is None
                     else knob_part(name, value))
    return parts


def _field(cell: Cell, name: str) -> Any:
    return cell.provider if name == "provider" else getattr(cell.workload, name)


def _setting_word(name: str, value: Any) -> str:
    if name == "backend":
        return dict(RUNTIME_TAGS).get(value, value)
    if name == "batch":
        return "batch default" if value is None else f"b{value}"
    return provider_slug(value)
