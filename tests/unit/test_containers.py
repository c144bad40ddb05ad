"""The container contract (envmatrix.running.containers), without an engine.

One ContainerSpec yields both the SDK's `containers.create` keyword arguments (what the runner
creates) and the `docker run` argv (what the report prints). Here the argv is parsed back into
SDK keyword arguments and must equal them flag by flag, for several specs and for a change of
every single field of the spec: a field mapped on one side only fails these tests.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from testlib import REPO, checkout_env

from envmatrix.rundir.layout import RunDir
from envmatrix.rundir.plan import Measure
from envmatrix.running import containers
from envmatrix.running.containers import ContainerSpec

# `docker run` flags that take one value -> (SDK keyword, how the SDK spells the value).
SCALAR_FLAGS: dict[str, tuple[str, Any]] = {
    "--name": ("name", str),
    "--user": ("user", str),
    "--network": ("network_mode", str),
    "--memory": ("mem_limit", str),
    "--memory-swap": ("memswap_limit", str),
    "--pids-limit": ("pids_limit", int),
    "--cpuset-cpus": ("cpuset_cpus", str),
    "-w": ("working_dir", str),
}
LIST_FLAGS = {"--cap-drop": "cap_drop", "--security-opt": "security_opt"}
MAPPING_FLAGS = {"-e": "environment", "--label": "labels"}


def _add_value(got: dict[str, Any], flag: str, value: str) -> None:
    if flag in SCALAR_FLAGS:
        name, convert = SCALAR_FLAGS[flag]
        assert name not in got, f"{flag} given twice"
        got[name] = convert(value)
    elif flag in LIST_FLAGS:
        got.setdefault(LIST_FLAGS[flag], []).append(value)
    elif flag in MAPPING_FLAGS:
        key, sep, item = value.partition("=")
        assert sep, f"{flag} {value}: not KEY=VALUE"
        got.setdefault(MAPPING_FLAGS[flag], {})[key] = item
    elif flag == "--tmpfs":
        path, _, options = value.partition(":")
        got.setdefault("tmpfs", {})[path] = options
    elif flag == "--gpus":
        assert "device_requests" not in got, "--gpus given twice"
        got["device_requests"] = [_device_request(value)]
    elif flag == "-v":
        source, target, *mode = value.split(":")
        assert mode in ([], ["ro"]), value
        got.setdefault("mounts", []).append(
            {"type": "bind", "source": source, "target": target, "read_only": mode == ["ro"]})
    elif flag == "--mount":
        got.setdefault("mounts", []).append(_volume_mount(value))
    else:
        pytest.fail(f"run_argv printed {flag}, which this test cannot map to the SDK")


def _volume_mount(value: str) -> dict[str, Any]:
    """`--mount type=volume,...` as docker's CLI turns it into a Mount (opts/mount.go): no
    source is an anonymous volume, whose `volume-label`s label it."""
    mount: dict[str, Any] = {"type": "", "source": "", "target": "", "read_only": False}
    labels: dict[str, str] = {}
    for part in value.split(","):
        key, _, item = part.partition("=")
        if key == "readonly":
            mount["read_only"] = True
        elif key == "volume-nocopy":
            mount["no_copy"] = True
        elif key == "volume-label":
            name, sep, text = item.partition("=")
            assert sep, value
            labels[name] = text
        else:
            assert key in ("type", "source", "target"), f"--mount {value}: unknown {key}"
            mount[key] = item
    assert mount["type"] == "volume", value
    if not mount["source"]:
        mount["labels"] = labels
    return mount


def _device_request(value: str) -> dict[str, Any]:
    """`--gpus VALUE` as docker's CLI turns it into a DeviceRequest (opts/gpus.go): `all` is
    count -1; `"device=0,1"` (a CSV field, hence the double quotes) names the devices."""
    request: dict[str, Any] = {"driver": "", "capabilities": [["gpu"]]}
    if value == "all":
        return {**request, "count": -1}
    assert value.startswith('"device=') and value.endswith('"'), value
    return {**request, "device_ids": value[len('"device='):-1].split(",")}


def sdk_kwargs_of_argv(argv: list[str]) -> dict[str, Any]:
    """What the SDK would have to be given to create the container this `docker run` makes."""
    assert argv[:3] == ["docker", "run", "--rm"]  # --rm: engine.run always removes containers
    got: dict[str, Any] = {}
    rest, i = argv[3:], 0
    while rest[i].startswith("-"):
        if rest[i] == "--read-only":
            got["read_only"] = True
            i += 1
            continue
        _add_value(got, rest[i], rest[i + 1])
        i += 2
    got["image"] = rest[i]
    if rest[i + 1:]:
        got["command"] = rest[i + 1:]
    return got


def _unset(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {}


def meaningful(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The SDK's arguments without those that ask for nothing (a flag left out of the argv)."""
    return {key: value for key, value in kwargs.items() if not _unset(value)}


def assert_same_container(spec: ContainerSpec) -> None:
    kwargs, argv = containers.create_kwargs(spec), containers.run_argv(spec)
    assert sdk_kwargs_of_argv(argv) == meaningful(kwargs), argv


RUNNER_LIKE = containers.cell_spec(
    RunDir(Path("/srv/reports/r1"), "r1"), "env--cnn--cpu", image="sha256:aa",
    image_id="sha256:aa", command=["/opt/venv/bin/python", "-m", "harness", "--cell", "c"],
    memory_limit="512m", pids_limit=64, cpuset="1", owner="host:42")  # fmt: skip

REMOTE_LIKE = containers.cell_spec(
    RunDir(Path("/srv/reports/r1"), "r1"), "env--cnn--cpu", image="sha256:aa",
    image_id="sha256:aa", command=["/opt/venv/bin/python", "-m", "harness", "--cell", "c"],
    memory_limit="512m", pids_limit=64, cpuset="1", owner="host:42",
    inputs_volume="envmatrix-inputs-r1-box-42")  # fmt: skip

SPECS = {
    "runner with cpuset": RUNNER_LIKE,
    "remote runner (volumes)": REMOTE_LIKE,
    "remote, unmanaged": replace(REMOTE_LIKE, managed=False, labels={}),
    "runner without cpuset": replace(RUNNER_LIKE, cpuset_cpus=None),
    "other limits": replace(RUNNER_LIKE, mem_limit="2g", pids_limit=4096, cpuset_cpus="0-1"),
    "no limits": replace(RUNNER_LIKE, mem_limit=None, pids_limit=None, cpuset_cpus=None),
    "defaults": ContainerSpec("debian:bookworm", ["sh", "-c", "true"]),
    "all gpus": replace(RUNNER_LIKE, gpus=("all",)),
    "two gpus": replace(RUNNER_LIKE, gpus=("0", "1")),
    "gpu by uuid": replace(RUNNER_LIKE, gpus=("GPU-4a2b7c1e-0000-1111-2222-333344445555",)),
    "nothing hardened": ContainerSpec(
        "img", [], name="named", user="0:0", network_disabled=False, read_only_root=False,
        tmpfs={}, cap_drop_all=False, no_new_privileges=False, managed=False, working_dir=None),
}  # fmt: skip


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_sdk_kwargs_and_docker_run_say_the_same(spec: ContainerSpec) -> None:
    assert_same_container(spec)


# A second value for every field of ContainerSpec. A new field needs one here, and then has to
# change both the SDK arguments and the argv, the same way.
ALTERNATIVES: dict[str, Any] = {
    "image": "sha256:bb",
    "command": ["/opt/venv/bin/python", "-V"],
    "name": "envmatrix-one",
    "user": "1000:1000",
    "environment": {"HOME": "/tmp", "EXTRA": "1"},
    "mounts": [("/srv/other", "/envmatrix/inputs", False)],
    "mount_type": "volume",
    "labels": {containers.RUN_LABEL: "r2"},
    "managed": False,
    "network_disabled": False,
    "read_only_root": False,
    "tmpfs": {"/tmp": "rw,size=64m", "/run": ""},
    "cap_drop_all": False,
    "no_new_privileges": False,
    "mem_limit": "1g",
    "pids_limit": 128,
    "cpuset_cpus": "0",
    "working_dir": "/",
    "gpus": ("0", "1"),
}


@pytest.mark.parametrize("name", [f.name for f in fields(ContainerSpec)])
def test_every_field_reaches_both_sides(name: str) -> None:
    if name not in ALTERNATIVES:
        pytest.fail(f"ContainerSpec.{name} is new: give it a value in ALTERNATIVES, and map it "
                    "in both containers.create_kwargs and containers.run_argv")
    changed = replace(RUNNER_LIKE, **{name: ALTERNATIVES[name]})
    assert changed != RUNNER_LIKE, f"pick an ALTERNATIVES value for {name} that differs"
    assert containers.create_kwargs(changed) != containers.create_kwargs(RUNNER_LIKE), name
    assert containers.run_argv(changed) != containers.run_argv(RUNNER_LIKE), name
    assert_same_container(changed)


def test_no_swap_and_the_hardening_are_printed() -> None:
    argv = containers.run_argv(RUNNER_LIKE)
    assert argv[argv.index("--memory") + 1] == argv[argv.index("--memory-swap") + 1] == "512m"
    for flag, value in [("--user", "65534:65534"), ("--cap-drop", "ALL"), ("--network", "none"),
                        ("--security-opt", "no-new-privileges"), ("--tmpfs", "/tmp:rw,size=256m"),
                        ("--pids-limit", "64"), ("--cpuset-cpus", "1")]:  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    assert "--read-only" in argv
    assert argv[argv.index("sha256:aa") + 1:] == list(RUNNER_LIKE.command)


HOST = {"image_id": "sha256:cc", "image_tag": "envmatrix/e:1", "command": ["harness", "--x"],
        "memory_limit": "1g", "pids_limit": 99, "cpuset": None}  # fmt: skip
MEASURE = Measure(memory_limit="4g", pids_limit=512, cpuset="0")


def test_reproduce_rebuilds_the_recorded_container_relative_to_the_run() -> None:
    argv = containers.reproduce_argv("r1", "env--cnn--cpu", HOST, MEASURE)
    got = sdk_kwargs_of_argv(argv)
    assert [m["source"] for m in got["mounts"]] == ["$PWD/inputs", "$PWD/scratch/env--cnn--cpu"]
    assert [m["read_only"] for m in got["mounts"]] == [True, False]
    assert (got["image"], got["command"]) == ("sha256:cc", ["harness", "--x"])
    assert got["environment"] == {"HOME": "/tmp", "ENVMATRIX_IMAGE_ID": "sha256:cc"}
    assert (got["mem_limit"], got["memswap_limit"], got["pids_limit"]) == ("1g", "1g", 99)
    assert "cpuset_cpus" not in got  # recorded as none: the measure's cpuset does not apply
    # A person's container: not managed, so no start-up sweep removes it while it runs.
    assert got["labels"] == {containers.RUN_LABEL: "r1", containers.CELL_LABEL: "env--cnn--cpu"}


def test_reproduce_falls_back_to_the_plans_measure_and_the_tag() -> None:
    older = {"image_tag": "envmatrix/e:1", "command": ["harness"]}
    got = sdk_kwargs_of_argv(containers.reproduce_argv("r1", "c", older, MEASURE))
    assert (got["mem_limit"], got["pids_limit"], got["cpuset_cpus"]) == ("4g", 512, "0")
    assert got["image"] == "envmatrix/e:1"
    # Recorded as no limit: none is printed (rather than "--memory None").
    unlimited = {**older, "memory_limit": None, "pids_limit": None}
    printed = containers.reproduce_argv("r1", "c", unlimited, MEASURE)
    assert "--memory" not in printed and "--pids-limit" not in printed


@pytest.mark.parametrize("module", ["envmatrix.report.build", "envmatrix.running.containers"])
def test_imports_without_the_docker_sdk(module: str) -> None:
    """The report (and the contract it prints from) must not need the SDK: a fresh
    interpreter, since this one may have imported docker already."""
    code = (f"import {module}, sys; import envmatrix; "
            f"assert envmatrix.__file__.startswith({str(REPO)!r}), envmatrix.__file__; "
            "assert 'docker' not in sys.modules, 'docker was imported'")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=checkout_env(), capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_gpu_cells_ask_for_gpus_and_cpu_cells_do_not() -> None:
    run_dir = RunDir(Path("/srv/reports/r1"), "r1")
    common = {"image": "sha256:aa", "image_id": "sha256:aa", "command": ["harness"],
              "memory_limit": "1g", "pids_limit": 64, "cpuset": None}
    cpu = containers.cell_spec(run_dir, "e--cnn--cpu", **common)
    every = containers.cell_spec(run_dir, "e--cnn--cuda", gpus="all", **common)
    two = containers.cell_spec(run_dir, "e--cnn--cuda", gpus="0,1", **common)
    assert containers.create_kwargs(cpu)["device_requests"] is None
    assert "--gpus" not in containers.run_argv(cpu)
    assert containers.create_kwargs(every)["device_requests"] == [
        {"driver": "", "count": -1, "capabilities": [["gpu"]]}]
    argv = containers.run_argv(two)
    assert argv[argv.index("--gpus") + 1] == '"device=0,1"'
    assert containers.create_kwargs(two)["device_requests"] == [
        {"driver": "", "device_ids": ["0", "1"], "capabilities": [["gpu"]]}]


def test_reproduce_asks_for_the_recorded_gpus() -> None:
    argv = containers.reproduce_argv("r1", "e--cnn--cuda", {**HOST, "gpus": "all"}, MEASURE)
    assert argv[argv.index("--gpus") + 1] == "all"
    assert "--gpus" not in containers.reproduce_argv("r1", "e--cnn--cpu", HOST, MEASURE)


def test_a_remote_cell_mounts_volumes_and_no_path_of_this_machine() -> None:
    kwargs = containers.create_kwargs(REMOTE_LIKE)
    assert kwargs["mounts"] == [
        {"type": "volume", "source": "envmatrix-inputs-r1-box-42", "target": "/envmatrix/inputs",
         "read_only": True, "no_copy": True},
        {"type": "volume", "source": "", "target": "/envmatrix/out", "read_only": False,
         "no_copy": True, "labels": containers.all_labels(REMOTE_LIKE)}]  # fmt: skip
    assert "/srv" not in repr(kwargs)
    assert containers.fresh_volumes(REMOTE_LIKE) == ["/envmatrix/out"]
    assert containers.fresh_volumes(RUNNER_LIKE) == []
    # Everything but the mounts is the hardened local container, flag by flag.
    local = containers.create_kwargs(RUNNER_LIKE)
    assert {k: v for k, v in kwargs.items() if k != "mounts"} == {
        k: v for k, v in local.items() if k != "mounts"}
    argv = containers.run_argv(REMOTE_LIKE)
    assert "-v" not in argv
    assert argv[argv.index("--mount") + 1] == (
        "type=volume,source=envmatrix-inputs-r1-box-42,target=/envmatrix/inputs,readonly,"
        "volume-nocopy")


def test_the_printed_command_binds_the_run_directory_whatever_the_host() -> None:
    argv = containers.reproduce_argv("r1", "env--cnn--cpu", HOST, MEASURE)
    assert "--mount" not in argv
    assert argv.count("-v") == 2
