"""`python -m harness.installed`: the image's installed set, as one JSON line on stdout.

Run by the host after each build (envmatrix.images.locks reads it into `locks/<env>.json` and
the lock file). Every distribution comes from `fingerprint.distributions`, the same reader as
each cell's fingerprint, so a lock and a cell can never disagree about names or about what counts
as installed. Hashes are what pip recorded when it installed the venv in the builder stage (pip's
`--report`, reduced to name, version and sha256 by build/pip_hashes.py, copied from
dockerfiles/scripts/); Debian packages come from dpkg's database. Standard library only, Python
3.6+.
"""

import json
import subprocess
import sys

from . import fingerprint

MARKER = "ENVMATRIX-INSTALLED "
HASHES_FILE = "/opt/venv/envmatrix-pip-hashes.json"
DPKG_FORMAT = "${db:Status-Abbrev}\\t${Package}\\t${Version}\\n"


def pip_hashes(path=None):
    """{name: {"version", "sha256"}} that pip recorded at install time; {} when none."""
    try:
        with open(path or HASHES_FILE) as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def pip_set(hashes=None):
    """{name: {"version": ..., "sha256": ... or None}} of every installed distribution."""
    hashes = pip_hashes() if hashes is None else hashes
    found = {}
    for name, version in sorted(fingerprint.distributions().items()):
        known = hashes.get(name) or {}
        same = known.get("version") == version  # a hash of another version is not this one's
        found[name] = {"version": version, "sha256": known.get("sha256") if same else None}
    return found


def apt_set():
    """{package: version} of the Debian packages installed (dpkg's database); None without dpkg."""
    try:
        text = subprocess.check_output(["dpkg-query", "-W", "-f=" + DPKG_FORMAT],
                                       stderr=subprocess.DEVNULL, universal_newlines=True,
                                       timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].startswith("ii"):
            found.setdefault(parts[1], parts[2])
    return dict(sorted(found.items()))


def main():
    doc = {"python": "{}.{}.{}".format(*sys.version_info[:3]), "pip": pip_set(),
           "apt": apt_set()}
    sys.stdout.write(MARKER + json.dumps(doc, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
