"""`python -m envmatrix push RUN_DIR --registry HOST[:PORT][/PREFIX]`: a run's images to a
registry of the user's, for other hosts and for archival.

Each environment image the run recorded is pushed as `<registry>/<environment id>:<content
hash>` (the local tag's hash, so the name says which content it is), through the SDK
(`Engine.push`), with the credentials of the user's docker config (`docker login`), which
envmatrix never reads or copies. The registry name is only a transport name: it is removed
from the local engine after the push. What the registry answered lands in the run directory's
`registry.json`: per registry, per environment, the pushed name and its manifest digest, and
the `name@digest` reference that pulls exactly those bytes on another host (a base can be
pinned to it: `bases.<name>.image: <registry>/<env>@sha256:...`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envmatrix import __version__, grammar
from envmatrix.errors import ConfigError, EngineError, RunDirError
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import RunDir, atomic_write_json, utc_now
from envmatrix.running.engine import EngineLike

REGISTRY_FILE = "registry.json"
REGISTRY_SCHEMA = "envmatrix.registry/1"
REGISTRY_VARIABLE = "ENVMATRIX_REGISTRY"  # the --registry default, for users who have one
Say = Callable[[str, str], None]


def target_name(registry: str, env_id: str, local_tag: str) -> str:
    """`<registry>/<env id>:<hash of the local tag>`, checked against the image grammar."""
    registry = registry.strip().rstrip("/")
    content = local_tag.rpartition(":")[2] if ":" in local_tag.split("/")[-1] else "latest"
    name = f"{registry}/{env_id}:{content}"
    if not registry or "@" in registry or not grammar.matches("image", name):
        raise ConfigError(
            f"--registry {registry!r} does not make a valid image name ({name!r}). Fix: give "
            "HOST[:PORT][/PREFIX] in lower case, e.g. --registry 127.0.0.1:5000/envmatrix "
            "(no tag, no digest, no scheme).")
    return name


def default_registry() -> str | None:
    return os.environ.get(REGISTRY_VARIABLE) or None


def push_run(engine: EngineLike, run_dir: RunDir, registry: str, say: Say) -> Path:
    """Push every image the run recorded; write registry.json; its path. Raises EngineError
    naming the environment when one push fails (the ones before it are recorded)."""
    images = planfile.read_resolved(run_dir.resolved_path).run.images
    if not any(record.tag for record in images.values()):
        raise RunDirError(f"{run_dir.path} records no built image. Fix: finish the run "
                          f"(`{run_dir.resume_hint()}`) or build it, then push.")
    pushed: dict[str, Any] = {}
    try:
        for env_id, record in sorted(images.items()):
            if not record.tag:
                say("push", f"{env_id}: no image was built in this run; skipped")
                continue
            pushed[env_id] = _push_one(engine, env_id, record.tag, record.image_id, registry)
            say("push", f"{env_id}: {pushed[env_id]['reference']}")
    finally:
        if pushed:
            _record(run_dir, registry, pushed)
    return run_dir.path / REGISTRY_FILE


def _push_one(engine: EngineLike, env_id: str, tag: str, image_id: str | None,
              registry: str) -> dict[str, Any]:
    name = target_name(registry, env_id, tag)
    found = engine.image_id(tag)
    if found is None or (image_id and found != image_id):
        what = "is not in this engine" if found is None else f"is now {found}, not {image_id}"
        raise EngineError(
            f"{env_id}: image {tag} {what}. Fix: rebuild it (`nox -s build`) or restore the "
            "run's images; a push sends exactly the image the run measured.")
    try:
        digest = engine.push(found, name)
    except EngineError as err:
        raise EngineError(f"{env_id}: {err}. Fix: check that the registry answers "
                          f"(`curl http://{registry.split('/')[0]}/v2/`) and your login "
                          "(`docker login`).") from err
    repository = name.rpartition(":")[0]
    return {"local_tag": tag, "image_id": found, "name": name, "digest": digest,
            "reference": f"{repository}@{digest}", "pushed_at": utc_now()}


def _record(run_dir: RunDir, registry: str, pushed: dict[str, Any]) -> None:
    """Merge into registry.json: one entry per registry, one per environment in it."""
    path = run_dir.path / REGISTRY_FILE
    doc: dict[str, Any] = {"schema": REGISTRY_SCHEMA, "registries": {}}
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise RunDirError(f"{path} is not JSON ({err}). Fix: move it away and push "
                              "again.") from err
    entry = doc.setdefault("registries", {}).setdefault(registry, {"images": {}})
    entry["envmatrix_version"] = __version__
    entry.setdefault("images", {}).update(pushed)
    atomic_write_json(path, doc)
