"""A registry of the user's, played by Debian's `docker-registry` on the loopback address.

The fixture starts the server on 127.0.0.1 and a free port with its own config and storage in
a temporary folder, waits until /v2/ answers, and stops it (SIGTERM, wait) afterwards, also
when a test fails; it removes every name it or the product gave an image in that registry,
never an image. The Docker engine allows plain HTTP to registries in 127.0.0.0/8 by default
(`docker info`: Insecure Registries), so nothing has to be configured.

Without `docker-registry` these tests skip with the fix; in CI (env CI set) a skip is a
failure (conftest.py), and `scripts/install-engine.sh --with-registry` installs it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from testlib import envmatrix_process as cli

from envmatrix.images.bases import ensure_base
from envmatrix.rundir.plan import Base
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWO_ENVS = Path(__file__).resolve().parent / "matrices" / "two_envs.yaml"
BULLSEYE = "bullseye-ort1.8.0"
START_S = 20.0
ZERO_DIGEST = "sha256:" + "0" * 64
# Whatever manifest the engine pushed (Docker schema 2, or OCI with a containerd image store).
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.oci.image.index.v1+json")
# Plain HTTP to the loopback address: never through a proxy the environment may name.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Registry:
    address: str  # 127.0.0.1:PORT

    def manifest_digest(self, repository: str, tag: str) -> str:
        """The digest the registry itself gives a tag (what a pull by digest must match)."""
        request = urllib.request.Request(
            f"http://{self.address}/v2/{repository}/manifests/{tag}", method="HEAD",
            headers={"Accept": ", ".join(MANIFEST_TYPES)})
        with _DIRECT.open(request, timeout=10) as answer:
            return str(answer.headers["Docker-Content-Digest"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(address: str) -> bool:
    try:
        with _DIRECT.open(f"http://{address}/v2/", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _drop_names(prefix: str) -> None:
    """Remove every image name (tag or digest) under `prefix`; the images themselves stay
    wherever they have another name."""
    client = docker.from_env()
    for image in client.images.list():
        names = [*(image.attrs.get("RepoTags") or []), *(image.attrs.get("RepoDigests") or [])]
        for name in names:
            if name.startswith(prefix):
                with contextlib.suppress(docker.errors.NotFound):
                    client.images.remove(name, noprune=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    server = shutil.which("docker-registry")
    if server is None:
        pytest.skip("docker-registry is not installed: `apt-get install docker-registry` "
                    "(scripts/install-engine.sh --with-registry)")
    folder = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{_free_port()}"
    (folder / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n"
        f"http:\n  addr: {address}\n")
    log = (folder / "registry.log").open("w")
    proc = subprocess.Popen([server, "serve", str(folder / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_S
        while not _answers(address):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not answer on {address}: "
                            f"{(folder / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield Registry(address)
    finally:
        _drop_names(f"{address}/")
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _names(engine_client: docker.DockerClient, image_id: str) -> list[str]:
    attrs = engine_client.images.get(image_id).attrs
    return [*(attrs.get("RepoTags") or []), *(attrs.get("RepoDigests") or [])]


def test_push_sends_a_run_image_and_records_the_registry_digest(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(TWO_ENVS.read_text())
    run = tmp_path / "run"
    built = cli("build", "--matrix", str(matrix), "--only", BULLSEYE, "--out", str(run),
                cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    target = f"{registry.address}/envmatrix-test"
    pushed = cli("push", str(run), "--registry", target, cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    doc = json.loads((run / "registry.json").read_text())
    entry = doc["registries"][target]["images"][BULLSEYE]
    content = entry["local_tag"].rpartition(":")[2]
    assert entry["name"] == f"{target}/{BULLSEYE}:{content}"
    assert entry["digest"] == registry.manifest_digest(f"envmatrix-test/{BULLSEYE}", content)
    assert entry["reference"] == f"{target}/{BULLSEYE}@{entry['digest']}"
    print(f"pushed {entry['reference']}")
    # The registry name was a transport name: no tag of it is left in the engine.
    client = docker.from_env()
    assert not [n for n in _names(client, entry["image_id"]) if n == entry["name"]]


def test_a_base_pinned_by_digest_is_pulled_from_the_registry(
    engine: Engine, registry: Registry, bookworm: str, tmp_path: Path
) -> None:
    repository = f"{registry.address}/envmatrix-test/debian"
    digest = engine.push(bookworm, f"{repository}:bookworm")
    assert digest == registry.manifest_digest("envmatrix-test/debian", "bookworm")
    pinned = f"{repository}@{digest}"
    engine.untag(pinned)  # so that the engine must ask the registry
    assert engine.image_id(pinned) is None
    log = tmp_path / "base-pinned.log"
    image_id = ensure_base(engine, Base("pinned", pinned, "debian"), log_path=log)
    print(f"pulled {pinned} -> {image_id}")
    assert image_id == engine.image_id(bookworm)  # the same bytes, by content
    assert re.search(rf"pulled \(sha256:[0-9a-f]+, {re.escape(pinned)}\)", log.read_text())


def test_a_wrong_digest_stops_the_run_before_anything_is_built(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    wrong = f"{registry.address}/envmatrix-test/debian@{ZERO_DIGEST}"
    text = TWO_ENVS.read_text().replace('trixie: {image: "debian:trixie", bootstrap: {suite: '
                                        'trixie}}', f'trixie: {{image: "{wrong}"}}')
    assert wrong in text
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(text)
    run = tmp_path / "run"
    done = cli("build", "--matrix", str(matrix), "--out", str(run), cwd=tmp_path)
    assert done.returncode == 4, done.stderr
    flat = " ".join(done.stderr.split())
    assert f"Base image {wrong} (base 'trixie') could not be pulled:" in flat
    assert "manifest unknown" in flat or "not found" in flat  # the engine's own words
    assert "Fix: check the digest" in flat
    assert not list((run / "logs").glob("build-*.log")), "nothing may be built"
