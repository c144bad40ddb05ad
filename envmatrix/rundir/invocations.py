"""Run-directory files that hold one entry per invocation: `rounds.json`, `looks.json`.

A run, each --resume of it, and each host of a multi-host run (one thread per host, all in one
process) add their own entry and rewrite it as they go, so what an interrupted invocation did is
on disk too. Entries are told apart by their position, never by their timestamp: a resume may
start within the second its run stopped.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from envmatrix.rundir.layout import atomic_write_json, utc_now

# One lock for every such file: hosts write their entries from threads of one process.
_LOCK = threading.Lock()


class InvocationEntry:
    """This invocation's entry in `path` (schema `schema`); `save` writes it in place."""

    def __init__(self, path: Path, schema: str, entry: dict[str, Any],
                 host: str | None = None) -> None:
        self.path, self.schema = path, schema
        self.entry: dict[str, Any] = {"started_at": utc_now(), **entry}
        if host is not None:  # one entry per host of a multi-host run (envmatrix.schedule)
            self.entry["host"] = host
        self._index: int | None = None  # where the entry sits once saved

    def save(self) -> None:
        """Write the file with this entry as it is now; other entries stay as they are."""
        with _LOCK:  # merged with the other hosts' entries, never clobbering them
            doc = self._read()
            entries: list[Any] = doc["invocations"]
            if self._index is None or self._index >= len(entries):
                self._index = len(entries)
                entries.append(self.entry)
            else:
                entries[self._index] = self.entry
            atomic_write_json(self.path, doc)

    def _read(self) -> dict[str, Any]:
        """The file as it is; a new one when missing or not one (it is evidence, not data)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            doc = None
        ok = isinstance(doc, dict) and isinstance(doc.get("invocations"), list)
        return doc if ok else {"schema": self.schema, "invocations": []}
