"""Files of a cell on an engine that does not share this machine's paths, with a fake SDK client.

`Engine` turns a volume-mounted cell spec into SDK calls: the inputs copied into a named volume
through a helper container that never starts, the scratch volume made writable for uid 65534
(through such a helper too) and copied back after the end, and everything removed on every path (a
failure, a timeout, Ctrl-C). Here a fake client records those calls; tests/integration/
test_hosts.py runs the same code against a second real engine.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from envmatrix.errors import EngineError
from envmatrix.rundir.layout import RunDir
from envmatrix.running import containers
from envmatrix.running.engine import Engine

VOLUME = "envmatrix-inputs-r1-box-42"


def tar_of(entries: dict[str, bytes | None], links: dict[str, str] | None = None) -> bytes:
    """A tar as `get_archive` sends it: None is a folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


@dataclass
class FakeContainer:
    client: FakeClient
    kwargs: dict[str, Any]
    id: str = "c0ffee"
    status: str = "created"
    events: list[str] = field(default_factory=list)

    @property
    def attrs(self) -> dict[str, Any]:
        return {"State": {"ExitCode": self.client.exit_code, "OOMKilled": False}}

    def put_archive(self, path: str, data: Any) -> bool:
        raw = data if isinstance(data, bytes) else data.read()
        self.client.log.append(("put_archive", path, members(raw)))
        if self.client.fail_put:
            raise docker.errors.APIError("no space left on device")
        return True

    def start(self) -> None:
        self.client.log.append(("start", self.id))
        self.status = "running"

    def wait(self, timeout: float) -> dict[str, int]:
        self.client.log.append(("wait",))
        if self.client.interrupt:
            raise KeyboardInterrupt
        self.status = "exited"
        return {"StatusCode": self.client.exit_code}

    def get_archive(self, path: str) -> tuple[Any, dict[str, Any]]:
        self.client.log.append(("get_archive", path))
        data = self.client.out_tar
        return iter([data[:100], data[100:]]), {"name": "out"}

    def logs(self, **kw: Any) -> bytes:
        return b"measured\n"

    def reload(self) -> None:
        pass

    def stop(self, timeout: int) -> None:
        self.client.log.append(("stop",))

    def kill(self) -> None:
        pass

    def remove(self, **kw: Any) -> None:
        self.client.log.append(("remove", self.id, kw))


@dataclass
class FakeVolume:
    client: FakeClient
    name: str

    def remove(self, force: bool = False) -> None:
        self.client.log.append(("remove_volume", self.name))


class FakeVolumes:
    def __init__(self, client: FakeClient) -> None:
        self.client = client

    def create(self, name: str, labels: dict[str, str]) -> FakeVolume:
        self.client.log.append(("create_volume", name, labels))
        return FakeVolume(self.client, name)

    def get(self, name: str) -> FakeVolume:
        return FakeVolume(self.client, name)


class FakeContainers:
    def __init__(self, client: FakeClient) -> None:
        self.client = client

    def create(self, image: str, **kwargs: Any) -> FakeContainer:
        self.client.log.append(("create", image, kwargs))
        container = FakeContainer(self.client, kwargs, id=f"c{len(self.client.log)}")
        self.client.made.append(container)
        return container


@dataclass
class FakeClient:
    log: list[Any] = field(default_factory=list)
    made: list[FakeContainer] = field(default_factory=list)
    out_tar: bytes = b""
    exit_code: int = 0
    fail_put: bool = False
    interrupt: bool = False

    def __post_init__(self) -> None:
        self.volumes = FakeVolumes(self)
        self.containers = FakeContainers(self)

    def calls(self, name: str) -> list[Any]:
        return [entry for entry in self.log if entry[0] == name]


def remote_spec(tmp_path: Path) -> containers.ContainerSpec:
    return containers.cell_spec(
        RunDir(tmp_path / "run", "r1"), "env--mlp--cpu", image="sha256:aa", image_id="sha256:aa",
        command=["harness"], memory_limit="1g", pids_limit=64, cpuset=None, owner="me:1",
        inputs_volume=VOLUME)  # fmt: skip


# -- inputs: copied in once, through a helper that never starts -------------------------------


def inputs_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "inputs"
    (folder / "mlp").mkdir(parents=True)
    (folder / "mlp" / "model.onnx").write_bytes(b"onnx")
    (folder / "mlp" / "inputs.npz").write_bytes(b"npz")
    (folder / "mlp" / "inputs.npz").chmod(0o600)  # still readable by the cells over there
    return folder


def test_inputs_are_copied_into_a_labelled_volume_through_a_helper(tmp_path: Path) -> None:
    client = FakeClient()
    labels = {containers.MANAGED_LABEL: "true", containers.RUN_LABEL: "r1"}
    Engine(client).fill_volume(VOLUME, inputs_folder(tmp_path), image="sha256:aa",  # type: ignore[arg-type]
                               target="/envmatrix/inputs", labels=labels)
    assert client.calls("create_volume") == [("create_volume", VOLUME, labels)]
    (_, image, kwargs), = client.calls("create")
    assert image == "sha256:aa" and kwargs["labels"] == labels
    assert kwargs["network_mode"] == "none"
    mount = kwargs["mounts"][0]
    assert (mount["Type"], mount["Source"], mount["Target"]) == ("volume", VOLUME,
                                                                 "/envmatrix/inputs")
    (_, path, sent), = client.calls("put_archive")
    assert path == "/envmatrix/inputs"
    assert sent["./mlp/inputs.npz"].mode == 0o644 and sent["./mlp/inputs.npz"].uid == 0
    assert sent["./mlp"].mode == 0o755 and sent["./mlp/model.onnx"].isfile()
    assert not client.calls("start")  # the helper never runs
    assert [entry[0] for entry in client.log][-1] == "remove"  # ... and is gone


def test_a_failed_copy_in_says_so_and_removes_the_helper(tmp_path: Path) -> None:
    client = FakeClient(fail_put=True)
    with pytest.raises(EngineError, match="out of disk while copying .* into volume"):
        Engine(client).fill_volume(VOLUME, inputs_folder(tmp_path), image="i",  # type: ignore[arg-type]
                                   target="/envmatrix/inputs", labels={})
    assert client.calls("remove")


# -- outputs: a scratch volume, writable for 65534, copied back before removal ----------------

OUT_TAR = tar_of({"out": None, "out/round-0.json": b'{"status": "ok"}',
                  "out/outputs.npz": b"npz", "out/sub": None, "out/sub/x.txt": b"x",
                  "out/../escape.txt": b"no", "/etc/passwd": b"no"},
                 links={"out/link": "/etc/shadow"})


def test_the_scratch_volume_is_owned_by_the_run_user_and_copied_back(tmp_path: Path) -> None:
    client = FakeClient(out_tar=OUT_TAR)
    spec = remote_spec(tmp_path)
    scratch = tmp_path / "run" / "scratch" / "env--mlp--cpu"
    got = Engine(client).run(spec, timeout_s=30, copy_out=scratch)  # type: ignore[arg-type]
    assert got.exit_code == 0
    order = [entry[0] for entry in client.log]
    assert order == ["create_volume", "create", "put_archive", "remove",  # the scratch volume
                     "create", "start", "wait", "get_archive", "remove",  # the cell
                     "remove_volume"]
    (_, volume, labels), = client.calls("create_volume")
    assert volume.startswith("envmatrix-scratch-") and labels == containers.all_labels(spec)
    helper, cell = (entry[2] for entry in client.calls("create"))
    assert helper["mounts"][0]["Source"] == volume and helper["labels"] == labels
    # The owner reaches the volume's root through an entry named after the mount point, put
    # into the folder above it in the helper (the cell's own root is read-only).
    (_, path, sent), = client.calls("put_archive")
    assert path == "/envmatrix"
    root = sent["out"]
    assert root.isdir() and (root.uid, root.gid, root.mode) == (65534, 65534, 0o755)
    out = next(m for m in cell["mounts"] if m["Target"] == "/envmatrix/out")
    assert (out["Type"], out["Source"], out["ReadOnly"]) == ("volume", volume, False)
    assert cell["read_only"] and cell["user"] == "65534:65534"
    assert (scratch / "round-0.json").read_text() == '{"status": "ok"}'
    assert (scratch / "outputs.npz").read_bytes() == b"npz"
    assert (scratch / "sub" / "x.txt").read_bytes() == b"x"
    assert not (scratch / "link").exists() and not (tmp_path / "run" / "scratch" /
                                                    "escape.txt").exists()
    assert client.calls("remove")[-1] == ("remove", client.made[-1].id, {"force": True, "v": True})
    assert client.calls("remove_volume") == [("remove_volume", volume)]
    # The engine was given volumes only: no path of this machine.
    assert str(tmp_path) not in repr(client.calls("create"))


def test_ctrl_c_removes_the_container_and_its_volume_without_copying(tmp_path: Path) -> None:
    client = FakeClient(out_tar=OUT_TAR, interrupt=True)
    scratch = tmp_path / "scratch"
    with pytest.raises(KeyboardInterrupt):
        Engine(client).run(remote_spec(tmp_path), timeout_s=30, copy_out=scratch)  # type: ignore[arg-type]
    assert not client.calls("get_archive") and not scratch.exists()
    assert client.calls("stop") and len(client.calls("remove")) == 2  # helper, cell
    (_, volume, _), = client.calls("create_volume")
    assert client.calls("remove_volume") == [("remove_volume", volume)]


def test_a_failure_before_the_start_still_removes_everything(tmp_path: Path) -> None:
    client = FakeClient(fail_put=True)
    with pytest.raises(EngineError, match="running a container of sha256:aa"):
        Engine(client).run(remote_spec(tmp_path), timeout_s=30, copy_out=tmp_path / "s")  # type: ignore[arg-type]
    assert not client.calls("start") and len(client.calls("create")) == 1  # the helper only
    assert client.calls("remove") and client.calls("remove_volume")


def test_a_bind_mounted_cell_makes_no_volume_calls(tmp_path: Path) -> None:
    client = FakeClient()
    spec = containers.cell_spec(RunDir(tmp_path, "r1"), "c", image="i", image_id="i",
                                command=["h"], memory_limit=None, pids_limit=None, cpuset=None)
    Engine(client).run(spec, timeout_s=30)  # type: ignore[arg-type]
    assert [entry[0] for entry in client.log] == ["create", "start", "wait", "remove"]
