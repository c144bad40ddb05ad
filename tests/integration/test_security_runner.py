"""A real measurement container runs with least privilege: seen from the engine and from inside.

The cell goes through run_cells exactly as in a run; only its command is swapped (via the
`adjust` hook) for a probe that records what the process can do. The engine is wrapped only to
inspect the container while it exists; every call still goes to the real engine.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from envmatrix.config import load as config
from envmatrix.images import build as images
from envmatrix.images.build import BuiltImage
from envmatrix.inputs import prepare as inputs
from envmatrix.rundir.layout import create_run_dir
from envmatrix.rundir.plan import Cell, Measure, Plan
from envmatrix.running import containers, runner
from envmatrix.running.containers import ContainerSpec
from envmatrix.running.engine import ContainerOutcome, Engine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENV_GLOB = "trixie-*"  # the same image as test_failures_runner: no extra build
MEASURE = Measure(memory_limit="768m", pids_limit=100, cpuset="0", timeout_s=60)

PROBE = r"""
import errno, json, os, socket, subprocess

def attempt(path):
    try:
        with open(path, "w") as handle:
            handle.write("x")
        return "written"
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))

def connect():
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2).close()
        return "connected"
    except OSError as err:
        return errno.errorcode.get(err.errno, type(err).__name__)

status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
net = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
doc = {
    "uid": os.getuid(), "gid": os.getgid(),
    "id_u": subprocess.check_output(["id", "-u"]).decode().strip(),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
    "cap_bnd": status["CapBnd"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "interfaces": net, "connect": connect(),
    "write_root": attempt("/probe"), "write_usr": attempt("/opt/venv/probe"),
    "write_inputs": attempt("/envmatrix/inputs/probe"),
    "write_tmp": attempt("/tmp/probe"), "write_out": attempt("/envmatrix/out/probe.txt"),
    "home": os.environ.get("HOME"), "image_id": os.environ.get("ENVMATRIX_IMAGE_ID"),
    "docker_socket": any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")),
    "cwd": os.getcwd(),
}
with open("/envmatrix/out/probe.json", "w") as handle:
    json.dump(doc, handle)
"""


class InspectingEngine(Engine):
    """The real engine; records `docker inspect` of each container right after it starts."""

    def __init__(self, client: docker.DockerClient) -> None:
        super().__init__(client)
        self.inspected: list[dict[str, Any]] = []

    def run(self, spec: ContainerSpec, *, timeout_s: float, log_path: Path | None = None,
            on_start: Callable[[str], None] | None = None,
            copy_out: Path | None = None) -> ContainerOutcome:
        def inspect(container_id: str) -> None:
            self.inspected.append(self.container_attrs(container_id))

        return super().run(spec, timeout_s=timeout_s, log_path=log_path, on_start=inspect,
                           copy_out=copy_out)


@pytest.fixture(scope="module")
def probed(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with warnings.catch_warnings():  # the baseline is not selected: expected here
        warnings.simplefilter("ignore", config.ConfigWarning)
        plan: Plan = config.load_plan(REPO / "matrix.yaml", only=[ENV_GLOB])
    plan = replace(plan, measure=MEASURE, cells=plan.cells[:1])
    root = tmp_path_factory.mktemp("security")
    built: BuiltImage = images.ensure_image(
        engine, plan.environments[0], plan, run_dir=root / "build"
    )
    run = create_run_dir(root / "reports", "security")
    workload = plan.cells[0].workload
    prepared = {
        workload.name: inputs.prepare_workload(
            workload, run.workload_inputs(workload.name), ir_version=7, opset=11
        )
    }

    def probe(cell: Cell, launch: runner.Launch) -> runner.Launch:
        command = [containers.VENV_PYTHON, "-c", PROBE]
        return replace(launch, spec=replace(launch.spec, command=command))

    wrapped = InspectingEngine(docker.from_env())
    (result,) = runner.run_cells(wrapped, plan, run, {built.env_id: built}, prepared,
                                 adjust=probe)
    assert result["status"] == "no_result", result  # the probe writes no result file
    (attrs,) = wrapped.inspected
    inside = json.loads((run.scratch(result["cell"]) / "probe.json").read_text())
    return {"attrs": attrs, "inside": inside, "built": built, "run": run}


def test_engine_side_host_config(probed: dict[str, Any]) -> None:
    attrs = probed["attrs"]
    host = attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["NetworkMode"] == "none"
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["Memory"] == 768 * 2**20 and host["MemorySwap"] == host["Memory"]
    assert host["PidsLimit"] == 100 and host["CpusetCpus"] == "0"
    assert host["Tmpfs"] == {"/tmp": "rw,size=256m"}
    assert attrs["Config"]["Labels"]["envmatrix.run"] == "security"
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(mounts) == {"/envmatrix/inputs", "/envmatrix/out"}
    assert mounts["/envmatrix/inputs"]["RW"] is False and mounts["/envmatrix/out"]["RW"] is True
    assert not any("docker.sock" in m["Source"] for m in attrs["Mounts"])
    assert not host.get("Binds") and not host.get("Devices")


def test_inside_the_container(probed: dict[str, Any]) -> None:
    inside = probed["inside"]
    assert (inside["uid"], inside["gid"], inside["id_u"]) == (65534, 65534, "65534")
    assert int(inside["cap_eff"], 16) == 0 and int(inside["cap_prm"], 16) == 0
    assert int(inside["cap_bnd"], 16) == 0 and inside["no_new_privs"] == "1"
    assert inside["interfaces"] == ["lo"] and inside["connect"] != "connected"
    assert inside["write_root"] == "EROFS" and inside["write_usr"] in ("EROFS", "EACCES")
    assert inside["write_inputs"] == "EROFS"
    assert inside["write_tmp"] == "written" and inside["write_out"] == "written"
    assert inside["home"] == "/tmp" and inside["docker_socket"] is False
    assert inside["image_id"] == probed["built"].image_id
    assert inside["cwd"] == containers.HARNESS_HOME
