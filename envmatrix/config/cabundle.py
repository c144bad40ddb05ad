"""The CA bundle that builds hand to pip (`build.ca_bundle: auto`): the one the host's pip trusts.

TLS-inspecting proxies re-sign every certificate, so pip inside a build needs the host's bundle;
it enters the build as a build-stage file and never lands in an image layer (render.py).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

CA_BUNDLE_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


@functools.lru_cache(maxsize=1)
def _pip_config_cert() -> str | None:
    """The `cert` that the host's pip is configured with, if any (asked of pip itself)."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.cert"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def resolve_ca_bundle(environ: Mapping[str, str] | None = None) -> Path | None:
    """What `ca_bundle: auto` means: the bundle the host's pip trusts, or None.

    The first of PIP_CERT, SSL_CERT_FILE and REQUESTS_CA_BUNDLE that names a file wins, then
    pip's own `global.cert` setting.
    """
    environ = os.environ if environ is None else environ
    for name in CA_BUNDLE_VARIABLES:
        value = environ.get(name)
        if value and Path(value).is_file():
            return Path(value).resolve()
    configured = _pip_config_cert()
    return Path(configured).resolve() if configured and Path(configured).is_file() else None
