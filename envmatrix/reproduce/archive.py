"""Archive a run's images (and their bases) beside the run directory; restore them later.

`archive_run` saves every environment image a run recorded, and the base image each was built
on, with `docker save` through the SDK, one tarball per image, streamed to disk while its
sha256 is computed; `archive.json` (written last, atomically) lists them. `restore_archive`
checks every tarball against its sha256 before it loads anything, loads the images that are
not in the engine, checks each loaded id against the recorded one, puts the recorded tag back
and writes what the round trip changed into `restore.json` beside the manifest.

Layout (the default folder is `<run-dir>.archive` beside the run directory):

    archive.json             manifest `envmatrix.archive/1`: paths relative to this folder
    images/<env-id>.tar      one per environment image
    bases/<base>-<id12>.tar  one per base image (shared by the environments built on it)
    restore.json             one entry per restore: what was loaded and what changed

One tarball per image rather than one per run: a damaged file costs one environment, not the
run; one environment restores alone; and the SDK saves one image per call. The price is the
base layers stored again in each environment's tarball (they are what makes that tarball
restorable alone, without its base tarball).

A save/load round trip keeps the image id (the sha256 of the image's config) and every layer;
it loses the RepoDigests (registry digests belong to a registry's manifest, which a tarball does
not carry) and the Parent of a local build (the build's intermediate images are not saved);
tags are not in the tarball: restore adds the recorded one (see `ROUND_TRIP`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from envmatrix import __version__, yamlsrc
from envmatrix.errors import EngineError, RunDirError
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import atomic_write_json, open_run_dir, utc_now
from envmatrix.rundir.plan import Environment
from envmatrix.running.engine import EngineLike, ImageFacts

ARCHIVE_SCHEMA = "envmatrix.archive/1"
RESTORE_SCHEMA = "envmatrix.restore/1"
MANIFEST = "archive.json"
RESTORE_RECORD = "restore.json"
ARCHIVE_SUFFIX = ".archive"
HASH_CHUNK = 1 << 20
ROUND_TRIP = ("docker save/load keeps the image id (sha256 of the image config) and every layer; "
              "it loses RepoDigests (registry digests: no registry manifest is in the tarball) "
              "and the Parent of a local build (intermediate images are not saved); the tarball "
              "names no tag (saved by id), restore adds the recorded tag")
# Labels that may carry the id of the base an image was built on (image identity work).
BASE_ID_LABELS = ("envmatrix.base-id", "envmatrix.base.id", "envmatrix.base_id")

Progress = Callable[[str, str], None]


class ArchiveError(RunDirError):
    """An archive is missing, incomplete or damaged (exit code of a run-directory problem)."""


class MissingImages(EngineError):
    """Images a run recorded are not in the engine; the message says how to get them back."""


def mb(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f} MB"


def default_archive_dir(run_path: Path) -> Path:
    """`reports/<run-id>.archive` beside the run directory (`reports/latest` followed)."""
    real = run_path.resolve()
    return real.parent / f"{real.name}{ARCHIVE_SUFFIX}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- which images


@dataclass(frozen=True)
class BaseRef:
    """The base an environment image was built on, and how we know its id."""

    name: str
    ref: str
    image_id: str | None
    digest: str | None = None
    source: str = ""  # run record | image label | parent chain | layers | not found: why


def raw_run_images(resolved_path: Path) -> dict[str, dict[str, Any]]:
    """The `run.images` entries as written, with keys the typed record does not read yet."""
    doc = yamlsrc.read_plain(resolved_path)
    images = ((doc or {}).get("run") or {}).get("images") or {}
    return {str(k): dict(v or {}) for k, v in images.items()}


def _recorded_base(raw: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(base id, base digest) from a run record entry, in the shapes it may take."""
    nested: Mapping[str, Any] = raw["base"] if isinstance(raw.get("base"), dict) else {}
    base_id = raw.get("base_id") or raw.get("base_image_id") or nested.get("image_id") \
        or nested.get("id")
    digest = raw.get("base_digest") or nested.get("digest")
    return (str(base_id) if base_id else None), (str(digest) if digest else None)


def _chain_root(engine: EngineLike, facts: ImageFacts) -> str | None:
    """The first image of a local build's parent chain: the base it was built FROM."""
    seen, current = 0, facts
    while current.parent and seen < 500:  # a chain is as long as the Dockerfile's steps
        parent = engine.image_facts(current.parent)
        if parent is None:
            return None  # an intermediate image was removed: the chain is broken
        current, seen = parent, seen + 1
    return current.image_id if seen else None


def find_base(engine: EngineLike, env: Environment, facts: ImageFacts,
              raw: Mapping[str, Any]) -> BaseRef:
    """The base image of an environment image: recorded, labelled, or found in the engine."""
    name, ref = env.base.name, env.base.image
    base_id, digest = _recorded_base(raw)
    if base_id:
        return BaseRef(name, ref, base_id, digest, "run record")
    label = next((facts.labels[k] for k in BASE_ID_LABELS if facts.labels.get(k)), None)
    if label:
        return BaseRef(name, ref, label, digest, "image label")
    root = _chain_root(engine, facts)
    if root:
        return BaseRef(name, ref, root, digest, "parent chain")
    current = engine.image_facts(ref)
    if current and current.layers and facts.layers[:len(current.layers)] == current.layers:
        return BaseRef(name, ref, current.image_id, digest,
                       f"layers: {ref}'s layers begin the image's")
    return BaseRef(name, ref, None, digest, f"not found: {ref} in the engine is not the base of "
                   "this image, and the run recorded none")


# ---------------------------------------------------------------- archive


@dataclass
class ArchiveOutcome:
    path: Path
    manifest: dict[str, Any]
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return int(self.manifest["totals"]["bytes"])


def save_tar(engine: EngineLike, image_id: str, path: Path) -> tuple[int, str]:
    """Stream one image into `path` (via a partial file renamed at the end): (bytes, sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    digest, size = hashlib.sha256(), 0
    try:
        with partial.open("wb") as handle:
            def write(chunk: bytes) -> None:
                nonlocal size
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            engine.save_image(image_id, write)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # Ctrl-C too: no half tarball under a real name
        raise
    return size, digest.hexdigest()


def _claim(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        state = "an archive" if (target / MANIFEST).is_file() else \
            f"an interrupted archive (no {MANIFEST})"
        raise ArchiveError(f"{target} already exists and holds {state}: an archive is never "
                           "overwritten. Remove it, or give another folder with --out.")
    target.mkdir(parents=True, exist_ok=True)


def _check_space(target: Path, needed: int) -> None:
    """Refuse early rather than fill the disk: a tarball is about as large as its image."""
    probe = next(p for p in (target, *target.parents) if p.exists())
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise ArchiveError(f"the archive needs about {mb(needed)} but {probe} has {mb(free)} "
                           "free: free some space, or give a folder on another disk with --out.")


def _facts_doc(facts: ImageFacts) -> dict[str, Any]:
    return {"image_id": facts.image_id, "tags": list(facts.tags),
            "repo_digests": list(facts.repo_digests), "parent": facts.parent or None,
            "created": facts.created, "size_bytes": facts.size_bytes,
            "layers": len(facts.layers)}


def _missing_message(run: Path, missing: list[str]) -> str:
    lines = "\n  ".join(missing)
    return (f"{len(missing)} image(s) of {run} are not in the engine:\n  {lines}\nFix: restore "
            "them from the run's archive (`nox -s restore -- ARCHIVE`), or rebuild them from "
            "the run's lock (docs/reproduce.md).")


def archive_run(engine: EngineLike, run_path: Path, out: Path | None = None,
                progress: Progress | None = None) -> ArchiveOutcome:
    """Save a run's environment images and their bases; write archive.json last."""
    say = progress or (lambda stage, message: None)
    started = time.monotonic()
    run_dir = open_run_dir(run_path)
    resolved = planfile.read_resolved(run_dir.resolved_path)
    raw = raw_run_images(run_dir.resolved_path)
    found, skipped, missing = [], {}, []
    for env in resolved.plan.environments:
        record = resolved.run.images.get(env.id)
        if record is None or not record.image_id:
            skipped[env.id] = "the run has no image for it (its build failed or never ran)"
            continue
        facts = engine.image_facts(record.image_id)
        if facts is None:
            missing.append(f"{env.id}: {record.image_id} ({record.tag})")
            continue
        found.append((env, record.tag, facts))
    if missing:
        raise MissingImages(_missing_message(run_dir.path, missing))
    target = out or default_archive_dir(run_dir.path)
    _check_space(target, _estimate(engine, found))
    _claim(target)
    say("archive", f"{len(found)} environment image(s) of run {run_dir.run_id} into {target}")
    envs_doc: dict[str, dict[str, Any]] = {}
    bases_doc: dict[str, dict[str, Any]] = {}
    for env, tag, facts in found:
        base = find_base(engine, env, facts, raw.get(env.id, {}))
        envs_doc[env.id] = _save_environment(engine, target, env, tag, facts, base, say)
        if base.image_id:
            bases_doc.setdefault(base.image_id, _save_base(engine, target, base, say))
            envs_doc[env.id]["base"]["file"] = bases_doc[base.image_id].get("file")
    files = [d for d in [*envs_doc.values(), *bases_doc.values()] if d.get("file")]
    manifest = {
        "schema": ARCHIVE_SCHEMA, "envmatrix_version": __version__, "run_id": run_dir.run_id,
        "run_dir": os.path.relpath(run_dir.path.resolve(), target.resolve()),
        "run_envmatrix_version": resolved.run.envmatrix_version, "created_at": utc_now(),
        "round_trip": ROUND_TRIP, "environments": envs_doc,
        "bases": {d["name"]: d for d in bases_doc.values()}, "not_archived": skipped,
        "totals": {"files": len(files), "bytes": sum(int(d["file_bytes"]) for d in files)},
    }
    atomic_write_json(target / MANIFEST, manifest)
    return ArchiveOutcome(target, manifest, time.monotonic() - started)


def _estimate(engine: EngineLike, found: list[tuple[Environment, str | None, ImageFacts]]) -> int:
    """Bytes the tarballs will take: every image, plus each distinct base under its name."""
    bases = {env.base.image for env, _tag, _facts in found}
    base_sizes = [engine.image_size(ref) or 0 for ref in sorted(bases)]
    return sum(f.size_bytes or 0 for _env, _tag, f in found) + sum(base_sizes)


def _save_environment(engine: EngineLike, target: Path, env: Environment, tag: str | None,
                      facts: ImageFacts, base: BaseRef, say: Progress) -> dict[str, Any]:
    name = f"images/{env.id}.tar"
    began = time.monotonic()
    size, sha = save_tar(engine, facts.image_id, target / name)
    say("archive", f"{env.id}: {name} {mb(size)} in {time.monotonic() - began:.1f}s "
                   f"(image {mb(facts.size_bytes)})")
    return {"tag": tag, **_facts_doc(facts), "file": name, "file_bytes": size, "sha256": sha,
            "base": {"name": base.name, "ref": base.ref, "image_id": base.image_id,
                     "digest": base.digest, "source": base.source}}


def _save_base(engine: EngineLike, target: Path, base: BaseRef, say: Progress) -> dict[str, Any]:
    assert base.image_id is not None
    facts = engine.image_facts(base.image_id)
    doc: dict[str, Any] = {"name": base.name, "ref": base.ref, "image_id": base.image_id,
                           "digest": base.digest}
    if facts is None:  # recorded by the run, since removed or replaced: the image tar suffices
        say("archive", f"base {base.ref} ({base.image_id[:19]}) is no longer in the engine; "
                       "not archived (every environment tarball holds its base layers)")
        return {**doc, "file": None, "note": "not in the engine when archived"}
    name = f"bases/{base.name}-{_short(base.image_id)}.tar"
    began = time.monotonic()
    size, sha = save_tar(engine, base.image_id, target / name)
    say("archive", f"base {base.ref}: {name} {mb(size)} in {time.monotonic() - began:.1f}s")
    tag = base.ref if base.ref in facts.tags else None
    return {**doc, "tag": tag, **_facts_doc(facts), "file": name, "file_bytes": size,
            "sha256": sha}


def _short(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


# ---------------------------------------------------------------- restore


@dataclass
class Restored:
    """What restore did with one image of the archive."""

    kind: str  # "environment" | "base"
    name: str
    image_id: str
    action: str  # "loaded" | "present"
    tag: str | None
    tag_status: str
    file: str
    file_bytes: int
    size_bytes: int | None
    changes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RestoreOutcome:
    path: Path  # restore.json
    images: list[Restored]
    seconds: float


def read_manifest(archive_dir: Path) -> dict[str, Any]:
    path = archive_dir / MANIFEST
    if not path.is_file():
        raise ArchiveError(f"{archive_dir} holds no {MANIFEST}: give the folder `nox -s archive` "
                           "wrote (e.g. reports/<run-id>.archive); an archive whose manifest is "
                           "missing was interrupted: archive the run again.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArchiveError(f"{path} is unreadable ({err}): the archive is damaged.") from err
    if not isinstance(doc, dict) or doc.get("schema") != ARCHIVE_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ArchiveError(f"{path}: expected schema {ARCHIVE_SCHEMA}, found {found!r}.")
    return doc


def archive_entries(manifest: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, name, entry) of every archived tarball: bases first, so a load finds them."""
    bases = [("base", n, e) for n, e in (manifest.get("bases") or {}).items() if e.get("file")]
    envs = [("environment", n, e) for n, e in (manifest.get("environments") or {}).items()
            if e.get("file")]
    return bases + envs


def tar_path(archive_dir: Path, name: str) -> Path:
    """An archived file's path; only relative paths inside the archive are accepted."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ArchiveError(f"{MANIFEST} names {name!r}: archive files must be relative paths "
                           "inside the archive folder.")
    return archive_dir / Path(*relative.parts)


def verify_files(archive_dir: Path, manifest: Mapping[str, Any],
                 say: Progress | None = None) -> None:
    """Every tarball's sha256 against the manifest, before anything is loaded."""
    for _kind, _name, entry in archive_entries(manifest):
        path = tar_path(archive_dir, str(entry["file"]))
        if not path.is_file():
            raise ArchiveError(f"{path} is missing from the archive: copy it back from another "
                               "copy of the archive.")
        began = time.monotonic()
        actual, expected = sha256_file(path), str(entry["sha256"])
        if actual != expected:
            raise ArchiveError(
                f"{entry['file']} is damaged: its sha256 is {actual}, the manifest records "
                f"{expected}. Nothing was loaded. Fix: copy the file back from another copy "
                "of the archive.")
        if say:
            say("verify", f"{entry['file']}: sha256 ok ({mb(path.stat().st_size)} in "
                          f"{time.monotonic() - began:.1f}s)")


def _changes(entry: Mapping[str, Any], after: ImageFacts) -> dict[str, str]:
    """What the engine now says against what the archive recorded, field by field."""
    out = {"image_id": "kept" if after.image_id == entry["image_id"] else
           f"changed: {entry['image_id']} -> {after.image_id}"}
    before = list(entry.get("repo_digests") or [])
    if before and not after.repo_digests:
        out["repo_digests"] = f"lost: {', '.join(before)} (a loaded image has no registry digest)"
    elif before:
        out["repo_digests"] = "kept (the image was still in the engine)"
    else:
        out["repo_digests"] = "none before either (a local build or import has none)"
    if entry.get("parent") and not after.parent:
        out["parent"] = f"lost: {entry['parent']} (the build's intermediate images are not saved)"
    else:
        out["parent"] = "kept" if entry.get("parent") else "none before either"
    size = entry.get("size_bytes")
    out["size_bytes"] = "same" if size == after.size_bytes else f"{size} -> {after.size_bytes}"
    out["layers"] = ("same" if entry.get("layers") == len(after.layers) else
                     f"{entry.get('layers')} -> {len(after.layers)}")
    out["created"] = "same" if entry.get("created") == after.created else \
        f"{entry.get('created')} -> {after.created}"
    return out


def _retag(engine: EngineLike, image_id: str, tag: str | None) -> str:
    """Put the recorded tag back, unless it now names another image (then leave that alone)."""
    if not tag:
        return "no tag recorded"
    current = engine.image_id(tag)
    if current == image_id:
        return "in place"
    if current is not None:
        return (f"left alone: {tag} now names another image ({current}); use the image id, "
                "or move the tag yourself")
    engine.tag_image(image_id, tag)
    return "restored"


def restore_one(engine: EngineLike, archive_dir: Path, kind: str, name: str,
                entry: Mapping[str, Any]) -> Restored:
    began = time.monotonic()
    image_id, path = str(entry["image_id"]), tar_path(archive_dir, str(entry["file"]))
    action = "present"
    if engine.image_id(image_id) is None:
        loaded = engine.load_image(path)
        if image_id not in loaded:
            raise ArchiveError(
                f"{entry['file']} loaded as {', '.join(loaded) or 'nothing'}, but the archive "
                f"records {image_id} for {kind} {name}: the engine gave the image another id "
                "(another image store?); replay needs the recorded id.")
        action = "loaded"
    after = engine.image_facts(image_id)
    if after is None:
        raise ArchiveError(f"{entry['file']}: {image_id} is not in the engine after loading.")
    tag = entry.get("tag")
    return Restored(kind, name, image_id, action, tag, _retag(engine, image_id, tag),
                    str(entry["file"]), int(entry["file_bytes"]), after.size_bytes,
                    _changes(entry, after), time.monotonic() - began)


def restore_archive(engine: EngineLike, archive_dir: Path,
                    progress: Progress | None = None) -> RestoreOutcome:
    """Verify every tarball, load what the engine lacks, check ids, re-tag; record it all."""
    say = progress or (lambda stage, message: None)
    started = time.monotonic()
    manifest = read_manifest(archive_dir)
    verify_files(archive_dir, manifest, say)
    done = []
    for kind, name, entry in archive_entries(manifest):
        item = restore_one(engine, archive_dir, kind, name, entry)
        say("restore", f"{kind} {name}: {item.action} {item.image_id[:19]} ({mb(item.file_bytes)}"
                       f" tarball, image {mb(item.size_bytes)}, {item.seconds:.1f}s); tag "
                       f"{item.tag}: {item.tag_status}")
        done.append(item)
    seconds = time.monotonic() - started
    path = archive_dir / RESTORE_RECORD
    atomic_write_json(path, _restore_doc(path, manifest, done, seconds))
    return RestoreOutcome(path, done, seconds)


def _restore_doc(path: Path, manifest: Mapping[str, Any], done: list[Restored],
                 seconds: float) -> dict[str, Any]:
    """restore.json: earlier restores kept, this one appended."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("restores"), list):
        doc = {"schema": RESTORE_SCHEMA, "run_id": manifest.get("run_id"), "restores": []}
    doc["restores"].append({
        "restored_at": utc_now(), "envmatrix_version": __version__,
        "seconds": round(seconds, 1), "round_trip": ROUND_TRIP,
        "images": [{"kind": r.kind, "name": r.name, "image_id": r.image_id,
                    "action": r.action, "tag": r.tag, "tag_status": r.tag_status,
                    "file": r.file, "file_bytes": r.file_bytes, "size_bytes": r.size_bytes,
                    "seconds": round(r.seconds, 1), "changes": r.changes} for r in done],
    })
    return doc
