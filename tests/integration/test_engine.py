"""envmatrix.running.engine against the real Docker engine: runs, deadlines, OOM, cleanup and
errors."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import docker
import pytest

from envmatrix.errors import BaseImageError, BuildError, EngineError
from envmatrix.running.containers import ContainerSpec
from envmatrix.running.engine import Engine

pytestmark = pytest.mark.integration


def _leftovers(labels: dict[str, str]) -> list[object]:
    client = docker.from_env()
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return list(client.containers.list(all=True, filters=filters))


def test_connect_names_the_fix_when_no_engine_answers(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(EngineError, match="install-engine.sh"):
        Engine.connect()


def test_run_collects_exit_code_and_both_streams_and_removes_the_container(
    engine: Engine, bookworm: str, run_label: dict[str, str], tmp_path: Path
) -> None:
    started: list[str] = []
    spec = ContainerSpec(bookworm, ["sh", "-c", "echo to-out; echo to-err >&2; id -u; exit 3"],
                         labels=run_label)
    log_path = tmp_path / "logs" / "run.log"
    outcome = engine.run(spec, timeout_s=60, log_path=log_path, on_start=started.append)
    assert outcome.exit_code == 3 and not outcome.timed_out and not outcome.oom_killed
    assert "to-out" in outcome.log and "to-err" in outcome.log
    assert "65534" in outcome.log  # the hardened default user
    assert log_path.read_text() == outcome.log
    assert started == [outcome.container_id]
    assert _leftovers(run_label) == []


def test_run_is_hardened_by_default(engine: Engine, bookworm: str, run_label: dict[str, str],
                                    tmp_path: Path) -> None:
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    out.chmod(0o777)
    (inputs / "model.bin").write_text("weights")
    script = (
        "cat /envmatrix/inputs/model.bin; echo; "
        "touch /envmatrix/inputs/x 2>/dev/null && echo inputs-writable; "
        "touch /etc/x 2>/dev/null && echo root-writable; "
        "touch /tmp/ok && echo tmp-writable; "
        "echo result > /envmatrix/out/r.txt; "
        "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; "
        "cat /sys/class/net/*/address 2>/dev/null | wc -l"
    )
    spec = ContainerSpec(
        bookworm, ["sh", "-c", script], labels=run_label, environment={"HOME": "/tmp"},
        mounts=[(str(inputs), "/envmatrix/inputs", True), (str(out), "/envmatrix/out", False)],
    )
    outcome = engine.run(spec, timeout_s=60)
    assert outcome.exit_code == 0, outcome.log
    lines = outcome.log.split("\n")
    assert "weights" in lines and "tmp-writable" in lines
    assert "inputs-writable" not in lines and "root-writable" not in lines
    assert "CapEff:\t0000000000000000" in lines and "NoNewPrivs:\t1" in lines
    assert lines[-2] == "1"  # network none: only the loopback interface
    assert (out / "r.txt").read_text() == "result\n"


def test_run_deadline_stops_the_container(engine: Engine, bookworm: str,
                                          run_label: dict[str, str]) -> None:
    spec = ContainerSpec(bookworm, ["sh", "-c", "echo begun; sleep 120"], labels=run_label)
    started = time.monotonic()
    outcome = engine.run(spec, timeout_s=2)
    elapsed = time.monotonic() - started
    assert outcome.timed_out and outcome.exit_code is None
    assert 2 <= elapsed < 20, elapsed
    assert "begun" in outcome.log
    assert _leftovers(run_label) == []


def test_run_reports_oom_kill(engine: Engine, bookworm: str, run_label: dict[str, str]) -> None:
    # tail buffers an endless line of zeros: memory grows until the 32 MiB limit kills it.
    spec = ContainerSpec(bookworm, ["tail", "/dev/zero"], labels=run_label, mem_limit="32m")
    outcome = engine.run(spec, timeout_s=60)
    assert outcome.oom_killed and outcome.exit_code == 137 and not outcome.timed_out


def test_interrupt_removes_the_container_then_reraises(engine: Engine, bookworm: str,
                                                       run_label: dict[str, str]) -> None:
    def interrupt(_container_id: str) -> None:
        raise KeyboardInterrupt

    spec = ContainerSpec(bookworm, ["sleep", "120"], labels=run_label)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        engine.run(spec, timeout_s=60, on_start=interrupt)
    assert time.monotonic() - started < 20
    assert _leftovers(run_label) == []


def test_missing_image_is_an_engine_error_saying_build_first(engine: Engine) -> None:
    spec = ContainerSpec("envmatrix/absent-image:0000", ["true"])
    with pytest.raises(EngineError, match="build it first"):
        engine.run(spec, timeout_s=10)


def test_remove_labelled_containers_removes_only_labelled_ones(
    engine: Engine, bookworm: str, run_label: dict[str, str]
) -> None:
    client = docker.from_env()
    mine = client.containers.create(bookworm, ["true"], labels=run_label)
    other = client.containers.create(bookworm, ["true"], labels={"envmatrix.run": "someone-else"})
    try:
        assert engine.remove_labelled_containers(run_label) == 1
        assert _leftovers(run_label) == []
        other.reload()  # still there
    finally:
        other.remove(force=True)
        if _leftovers(run_label):
            mine.remove(force=True)


def test_pull_without_registry_or_image_is_false(engine: Engine) -> None:
    assert engine.pull("envmatrix-test/does-not-exist:never") is False


def _tiny_rootfs(tmp_path: Path) -> Path:
    tar_path = tmp_path / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        data = b"hello from an imported rootfs\n"
        info = tarfile.TarInfo("etc/greeting")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return tar_path


def test_import_rootfs_labels_and_image_cleanup(engine: Engine, tmp_path: Path) -> None:
    ref = f"envmatrix-test/imported:{int(time.time())}"
    labels = {"envmatrix.managed": "true", "envmatrix.test": ref.replace(":", "-")}
    image_id = engine.import_rootfs(_tiny_rootfs(tmp_path), ref, labels)
    assert engine.image_id(ref) == image_id
    assert engine.image_labels(ref)["envmatrix.test"] == labels["envmatrix.test"]
    assert engine.remove_labelled_images({"envmatrix.test": labels["envmatrix.test"]}) == 1
    assert engine.image_id(ref) is None


def test_import_rootfs_of_a_missing_file_is_a_base_image_error(engine: Engine,
                                                               tmp_path: Path) -> None:
    with pytest.raises(BaseImageError, match="absent.tar"):
        engine.import_rootfs(tmp_path / "absent.tar", "envmatrix-test/none:1", {})


def test_build_deadline_kills_the_running_step(engine: Engine, bookworm: str,
                                               tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    # The timestamp keeps the step out of the build cache, so it really runs.
    (context / "Dockerfile").write_text(
        f"FROM {bookworm}\nRUN echo step-{time.time_ns()} && sleep 300\n"
    )
    tag = f"envmatrix-test/slow:{time.time_ns()}"
    log_path = tmp_path / "build.log"
    started = time.monotonic()
    with pytest.raises(BuildError, match="longer than 3 s") as info:
        engine.build(context, tag, labels={"envmatrix.managed": "true"}, buildargs={},
                     log_path=log_path, timeout_s=3)
    assert time.monotonic() - started < 30
    assert "sleep 300" in info.value.log_tail
    log = log_path.read_text()
    assert "Running in" in log and "returned a non-zero code: 137" in log  # the step was killed
    assert engine.image_id(tag) is None
    running = docker.from_env().containers.list(filters={"ancestor": bookworm})
    assert [c for c in running if "sleep 300" in " ".join(c.attrs["Config"]["Cmd"] or [])] == []


def test_build_failure_carries_the_log_tail(engine: Engine, bookworm: str,
                                            tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {bookworm}\nRUN echo about-to-fail && exit 7\n")
    with pytest.raises(BuildError, match="non-zero code: 7") as info:
        engine.build(context, "envmatrix-test/fails:1", labels={}, buildargs={},
                     log_path=tmp_path / "b.log", timeout_s=120)
    assert "about-to-fail" in info.value.log_tail
