"""The matrix's `hosts:`: the `Host`s of a plan, which hosts each environment selects, and
the cells each host measures.

Pure plan-making, no engine: a matrix without `hosts:` runs on the local default engine, with
the cell ids it always had. With a `hosts:` section every environment runs on the hosts its
`hosts:` selects (all of them when omitted; a list of names; or labels such as `{gpu: true}`),
and with more than one host every cell id ends in `--host-<name>`, so `--only '*--host-gpu-box'`
picks one machine. Reaching those engines is envmatrix.running.hosts's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from envmatrix.problems import KeyPath, Problem, did_you_mean
from envmatrix.rundir.plan import Cell, Host

DEFAULT = "default"  # the address of a host without url: or context:
HOST_SEPARATOR = "--host-"


def plan_hosts(specs: Mapping[str, Any], root: Path) -> tuple[Host, ...]:
    """`Host`s from the validated `hosts:` section (spec.HostSpec or None per name).

    TLS paths are taken relative to the matrix file's folder (and `~` expanded), as every other
    path of the file is.
    """
    hosts = []
    for name, spec in specs.items():
        if spec is None:
            hosts.append(Host(name))
            continue
        address = spec.url or (f"context:{spec.context}" if spec.context else DEFAULT)
        tls = spec.tls
        hosts.append(Host(
            name, address, tuple(sorted(spec.labels.items())),
            tls_ca=_path(tls.ca, root) if tls and tls.ca else None,
            tls_cert=_path(tls.cert, root) if tls else None,
            tls_key=_path(tls.key, root) if tls else None,
            tls_verify=tls.verify if tls else True, shared_paths=spec.shared_paths))
    return tuple(hosts)


def _path(text: str, root: Path) -> str:
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else root / path)


def select(selector: Any, hosts: Sequence[Host], where: KeyPath) -> tuple[list[str], list[Problem]]:
    """The host names an environment's `hosts:` selects (plan order) and any problems."""
    names = [h.name for h in hosts]
    if selector is None:
        return names, []
    if not hosts:
        return [], [Problem(where, "hosts: selects hosts, but the matrix has no hosts: section.",
                            "add a top-level hosts: section, or remove this key.")]
    if isinstance(selector, dict):
        chosen = [h.name for h in hosts
                  if all(h.label_dict.get(k) == v for k, v in selector.items())]
        if not chosen:
            return [], [Problem(where, f"no host has the labels {selector}.",
                                "give a host these labels:, or select hosts by name.")]
        return chosen, []
    unknown = [n for n in selector if n not in names]
    problems = [Problem(where, f"unknown host {n!r}{did_you_mean(n, names)}.",
                        f"use one of {', '.join(names)}.") for n in unknown]
    return [n for n in names if n in selector], problems


def cell_id_on(cell_id: str, host: str) -> str:
    return f"{cell_id}{HOST_SEPARATOR}{host}"


def spread(cells: Sequence[Cell], env_hosts: Mapping[str, Sequence[str]],
           hosts: Sequence[Host]) -> list[Cell]:
    """Every cell once per host of its environment, host by host within a cell.

    Ids gain `--host-<name>` only with more than one host, so a one-host matrix keeps the ids
    (and run directories) it had before hosts existed.
    """
    if not hosts:
        return list(cells)
    multi = len(hosts) > 1
    return [replace(cell, host=name, id=cell_id_on(cell.id, name) if multi else cell.id)
            for cell in cells for name in env_hosts.get(cell.environment.id, ())]
