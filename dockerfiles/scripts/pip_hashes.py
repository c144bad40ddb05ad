"""Reduce pip's install reports (`pip install --report`) to {name: {version, sha256}}.

Runs in the throwaway builder stage with the venv's Python (3.6+, standard library only). The
reports name the URLs pip downloaded from (an index URL may carry credentials), so only names,
versions and sha256 digests go into the image; the reports themselves stay in the builder.
Usage: python pip_hashes.py REPORT.json... > /opt/venv/envmatrix-pip-hashes.json
"""

import json
import os
import re
import sys


def _normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256(item):
    info = (item.get("download_info") or {}).get("archive_info") or {}
    hashes = info.get("hashes") or {}
    if hashes.get("sha256"):
        return hashes["sha256"]
    algorithm, _, value = (info.get("hash") or "").partition("=")
    return value if algorithm == "sha256" and value else None


def main(paths):
    found = {}
    for path in paths:
        if not os.path.isfile(path):  # the shell passes the glob itself when nothing matched
            continue
        with open(path) as handle:
            report = json.load(handle)
        for item in report.get("install") or []:
            meta = item.get("metadata") or {}
            if meta.get("name") and meta.get("version"):
                found[_normal(meta["name"])] = {"version": meta["version"],
                                                "sha256": _sha256(item)}
    sys.stdout.write(json.dumps(found, sort_keys=True, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
