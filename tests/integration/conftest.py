"""Shared fixtures of the integration tests: a real Docker engine and real base images.

Without an engine these tests skip, with the reason, on a developer machine; in CI (env CI=true)
a missing engine is a failure, so a broken CI setup can never pass by skipping everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from testlib import in_ci

from envmatrix.errors import EngineError
from envmatrix.images.bases import ensure_base
from envmatrix.rundir.plan import Base, Bootstrap
from envmatrix.running.engine import Engine


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return Engine.connect()
    except EngineError as err:
        if in_ci():
            pytest.fail(f"CI is set but no Docker engine answers: {err}", pytrace=False)
        pytest.skip(f"no Docker engine answers (start one with scripts/install-engine.sh): {err}")


@pytest.fixture(scope="session")
def bookworm(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """debian:bookworm, made with debootstrap when absent: the small image for engine tests."""
    base = Base("bookworm", "debian:bookworm", "debian", Bootstrap("bookworm"))
    log = tmp_path_factory.mktemp("bases") / "base-bookworm.log"
    ensure_base(engine, base, log_path=log)
    return base.image


@pytest.fixture()
def run_label(request: pytest.FixtureRequest, engine: Engine) -> Iterator[dict[str, str]]:
    """A label unique to one test; whatever carries it is removed afterwards."""
    labels = {"envmatrix.run": f"test-{os.getpid()}-{request.node.name}"[:120]}
    yield labels
    engine.remove_labelled_containers(labels)
