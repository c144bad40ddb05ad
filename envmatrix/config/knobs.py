"""Knobs: the settings of a cell that shape its numbers but not its image.

threads, cpuset, memory_limit, concurrency, onnxruntime session settings and provider options,
set per environment or as matrix axes (docs/matrix-reference.md, "Knobs"). Combinations of a matrix
that differ only in knobs are one environment, so one image, with several cells (`expand`
names them). Here: each environment draft's knobs become a typed variant, checked against the
runtime release it pins (`harness.optiontable`, the one table the harness checks again), so an
option a release does not know is refused before anything is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from envmatrix.config.expand import ORT_DISTRIBUTIONS, Variant
from envmatrix.problems import KeyPath, Problem
from envmatrix.rundir.plan import Environment, Knobs, Measure
from envmatrix_harness import optiontable

OPENVINO = "openvino"
_OPENVINO_FIXES = {
    "unknown": "use an option the pinned release has (envmatrix_harness/optiontable.py lists them "
               "with their releases).",
    "release": f"pin an {optiontable.OPENVINO_PACKAGE} release that has it, or remove the "
               "option.",
    "value": "write a value of the option's type (numbers: 2, booleans: true/false, "
             "load_config: a mapping).",
}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class DraftLike(Protocol):
    """What is needed of config's environment draft."""

    spec: Any  # spec.EnvironmentSpec
    env_id: str
    where: KeyPath
    origin: dict[tuple[str, ...], KeyPath]


def where_of(draft: DraftLike, key: tuple[str, ...]) -> KeyPath:
    """The key path of a setting as written (a matrix axis value, or inside the entry)."""
    for depth in range(len(key), 0, -1):
        if key[:depth] in draft.origin:
            return (*draft.origin[key[:depth]], *key[depth:])
    return (*draft.where, *key)


def knob_key(spec: Any) -> str:
    """The knobs of an environment spec as one comparable text (variants must differ in it)."""
    doc = {"threads": spec.threads, "cpuset": spec.cpuset, "memory_limit": spec.memory_limit,
           "concurrency": spec.concurrency, "session": spec.session.as_dict(),
           "provider_options": spec.provider_options}
    return json.dumps(doc, sort_keys=True)


def ort_pin(env: Environment) -> tuple[str, str] | None:
    """(onnxruntime distribution, version) the environment pins, or None."""
    packages = env.package_dict
    for name in ORT_DISTRIBUTIONS:
        if name in packages:
            return name, packages[name]
    return None


def typed(kind: str, value: Any) -> Any:
    """Matrix text as the option table's kind says (YAML scalars arrive as the text written);
    text that does not fit stays text, and the table's check then says why."""
    if not isinstance(value, str):
        return value
    if kind == "int" and re.fullmatch(r"[0-9]{1,9}", value):
        return int(value)
    if kind == "bool" and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    return value


class Variants:
    """Each draft's variant, with the problems and warnings found on the way."""

    def __init__(self, measure: Measure) -> None:
        self.measure = measure
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.by_env: dict[str, list[Variant]] = {}

    def add(self, draft: DraftLike, env: Environment) -> None:
        spec = draft.spec
        session = spec.session.as_dict()
        options = {p: dict(o) for p, o in spec.provider_options.items()}
        self._check_session(draft, env, session)
        if OPENVINO in options or OPENVINO in env.providers:
            options[OPENVINO] = self._openvino(draft, env, options.get(OPENVINO, {}))
        knobs = Knobs(threads=spec.threads, cpuset=spec.cpuset, memory_limit=spec.memory_limit,
                      session=tuple(sorted(session.items())),
                      concurrency=spec.concurrency)
        self.by_env.setdefault(env.id, []).append(
            (knobs, {p: tuple(sorted(o.items())) for p, o in options.items() if o}))

    def _problem(self, draft: DraftLike, key: tuple[str, ...], env: Environment, message: str,
                 fix: str) -> None:
        self.problems.append(Problem(where_of(draft, key), f"environment {env.id}: {message}",
                                     fix))

    def _check_session(self, draft: DraftLike, env: Environment,
                       session: Mapping[str, Any]) -> None:
        if not session:
            return
        pin = ort_pin(env)
        if pin is None:
            self._problem(draft, ("session",), env, "session settings are onnxruntime's, and "
                          "this environment pins no onnxruntime distribution.",
                          "remove session:, or pin onnxruntime.")
            return
        package, version = pin
        for name, why in optiontable.session_problems(session, package, version):
            key = ("session", *name.split(".", 1))
            what = (f"session config key {name.split('.', 1)[1]!r}" if name.startswith("config.")
                    else f"session setting {name!r}")
            self._problem(draft, key, env, f"{what} {why}.",
                          f"pin a newer {package}, or remove the setting.")
        for key in optiontable.unknown_config_keys(session):
            self.warnings.append(f"environment {env.id}: session config key {key!r} is not in "
                                 "envmatrix's table (envmatrix_harness/optiontable.py); "
                                 "onnxruntime ignores keys it does not know. The result records "
                                 "what the session read back.")
        threads = draft.spec.threads or self.measure.threads
        intra = session.get("intra_op_threads")
        if threads and intra and threads != intra:
            self._problem(draft, ("session", "intra_op_threads"), env,
                          f"session.intra_op_threads {intra} contradicts threads {threads}.",
                          "set one of the two (threads also reaches OpenVINO's num_of_threads).")

    def _openvino(self, draft: DraftLike, env: Environment,
                  options: dict[str, Any]) -> dict[str, Any]:
        """The OpenVINO options typed and checked against the pinned release; threads added."""
        version = env.package_dict.get(optiontable.OPENVINO_PACKAGE)
        if version is None:
            return options  # expand.check_environment refuses openvino without the package
        table = optiontable.OPENVINO_OPTIONS
        options = {k: typed(table[k][0], v) if k in table else v for k, v in options.items()}
        for name, why, what in optiontable.openvino_problems(options, version):
            self._problem(draft, ("provider_options", OPENVINO, name), env,
                          f"OpenVINO provider option {name!r} {why}.", _OPENVINO_FIXES[what])
        return self._openvino_threads(draft, env, options, version)

    def _openvino_threads(self, draft: DraftLike, env: Environment, options: dict[str, Any],
                          version: str) -> dict[str, Any]:
        threads = draft.spec.threads or self.measure.threads
        name = optiontable.OPENVINO_THREADS_OPTION
        if not threads or name in options:
            return options
        if optiontable.openvino_problems({name: threads}, version):
            self.warnings.append(f"environment {env.id}: threads {threads} does not reach "
                                 f"OpenVINO: {optiontable.OPENVINO_PACKAGE} {version} has no "
                                 f"{name} option.")
            return options
        return {**options, name: threads}
