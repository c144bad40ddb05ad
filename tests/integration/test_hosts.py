"""One matrix across three Docker hosts on this machine: the local engine, a second engine
reachable only over TLS on a loopback port, and the local engine again through an sshd on the
loopback address (ssh://). The tests start both servers and stop them, even on failure, and
check that the machine's own docker0 survives.

The TLS engine is taken for another machine (a tcp:// host does not share this machine's paths
by default): its cells get the run's inputs through a volume and their results copied back,
while the local engine bind-mounts the run directory, and so does the ssh:// one, which says
`shared_paths: true` (it is this machine's own engine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hostlab  # tests/integration is on sys.path (rootdir-relative test modules)
import pytest
from testlib import envmatrix_started, in_ci

from envmatrix.rundir.layout import RunDir
from envmatrix.rundir.plan import Host
from envmatrix.running import containers, hosts
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENV = "trixie-ort1.32.0"  # copied exactly from matrices/two_envs.yaml: its image is reused
HOSTS = ("local", "tls-loopback", "ssh-loopback")
RUN_TIMEOUT_S = 1800


def _missing_tools() -> list[str]:
    return [t for t in ("dockerd", "openssl", "ssh", "ssh-keygen", "ip", "iptables")
            if shutil.which(t) is None] + ([] if Path("/usr/sbin/sshd").exists() else ["sshd"])


@pytest.fixture(scope="module")
def lab(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Certificates, the TLS engine and sshd, shared by this module's tests; all stopped after."""
    missing = _missing_tools()
    if missing or os.geteuid() != 0:
        why = f"needs root and {', '.join(missing) or 'nothing else'}"
        if in_ci():
            pytest.fail(f"CI is set but the hosts lab cannot start: {why}", pytrace=False)
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("hostlab")
    certs = hostlab.make_certs(folder / "certs")
    tls = hostlab.TlsEngine(folder / "engine", certs, hostlab.free_port())
    ssh = hostlab.SshServer(folder / "ssh", hostlab.free_port())
    hostlab.add_bridge()
    try:
        tls.start()
        assert hostlab.docker0_exists(), "the second engine removed docker0"
        ssh.start()
        yield {"folder": folder, "certs": certs, "tls": tls, "ssh": ssh,
               "path": f"{ssh.client_bin()}{os.pathsep}{os.environ['PATH']}"}
    finally:
        ssh.stop()
        tls.stop()
        hostlab.release_mounts(folder)
        hostlab.remove_bridge()
        shutil.rmtree(folder / "engine", ignore_errors=True)
    assert hostlab.docker0_exists(), "docker0 is gone after the second engine stopped"
    engine.image_id("debian:trixie")  # the machine's own engine still answers


def write_matrix(path: Path, lab: dict[str, Any], hosts: tuple[str, ...], repeats: int) -> Path:
    certs, tls, ssh = lab["certs"], lab["tls"], lab["ssh"]
    entries = {
        "local": "  local:\n",
        "tls-loopback": (f"  tls-loopback:\n    url: {tls.url}\n    tls: {{ca: {certs['ca.pem']}, "
                         f"cert: {certs['cert.pem']}, key: {certs['key.pem']}}}\n"),
        "ssh-loopback": (f"  ssh-loopback:\n    url: {ssh.url}\n    labels: {{via: ssh}}\n"
                         "    shared_paths: true\n"),
    }
    path.write_text(
        "version: 1\n"
        'bases:\n  trixie: {image: "debian:trixie", bootstrap: {suite: trixie}}\n'
        "hosts:\n" + "".join(entries[h] for h in hosts) +
        "environments:\n  - description: \"Debian 13, Python 3.13, onnxruntime 1.32\"\n"
        "    base: trixie\n    packages: {onnxruntime: \"1.32.0\"}\n    providers: [cpu]\n"
        "workloads:\n  mlp: {model: \"zoo:mlp\"}\n"
        f"measure: {{warmup: 3, min_iterations: 20, min_time_s: 0.2, repeats: {repeats}, "
        "timeout_s: 300}\n")
    return path


def cli(args: list[str], lab: dict[str, Any], cwd: Path) -> subprocess.Popen[str]:
    return envmatrix_started(*args, cwd=cwd, PATH=lab["path"])


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    print(err)
    return proc.returncode, err


def result(run_dir: Path, host: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (run_dir / "results" / f"{ENV}--mlp--cpu--host-{host}.json").read_text())
    return doc


def secrets_of(lab: dict[str, Any]) -> list[str]:
    """Lines of every key and certificate the test made (the base64 bodies)."""
    paths = [*lab["certs"].values(), lab["ssh"].folder / "id_test"]
    bodies = []
    for path in paths:
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("-----")]
        bodies += [ln for ln in lines if len(ln) >= 40]
    return bodies


def test_three_hosts_one_report(lab: dict[str, Any], tmp_path: Path) -> None:
    one = write_matrix(tmp_path / "one.yaml", lab, ("local",), 2)
    started = time.monotonic()
    code, err = finish(cli(["matrix", "--matrix", str(one), "--out", str(tmp_path / "one")],
                           lab, tmp_path))
    one_host_s = time.monotonic() - started
    assert code == 0, err
    assert (tmp_path / "one" / "results" / f"{ENV}--mlp--cpu.json").is_file()  # id unchanged

    three = write_matrix(tmp_path / "three.yaml", lab, HOSTS, 2)
    started = time.monotonic()
    code, err = finish(cli(["matrix", "--matrix", str(three), "--out", str(tmp_path / "three")],
                           lab, tmp_path))
    three_hosts_s = time.monotonic() - started
    print(f"WALL one host {one_host_s:.1f} s, three hosts {three_hosts_s:.1f} s")
    assert code == 0, err
    run_dir = tmp_path / "three"
    for host in HOSTS:
        res = result(run_dir, host)
        assert res["status"] == "ok", res["reason"]
        assert res["host"]["machine"]["name"] == host
        assert res["host"]["machine"]["engine_version"]
        # Only the TLS engine copied; every cell's outputs reached outputs/ for parity.
        assert res["host"]["machine"]["shared_paths"] is (host != "tls-loopback")
        assert (run_dir / res["host"]["outputs"]).is_file()
    remote = result(run_dir, "tls-loopback")
    print(f"REMOTE CELL {remote['status']} in {remote['host']['duration_s']} s, "
          f"p50 {remote['summary']['latency_s']['p50'] * 1000:.3f} ms")
    assert "inputs copied into volume" in err
    assert not tls_engine(lab).remove_labelled_volumes(dict(containers.MANAGED)), \
        "the run left volumes on the TLS engine"
    report = (run_dir / "report.md").read_text()
    assert "| host |" in report.replace("|host|", "| host |") or " host " in report
    assert "## Hosts" in report
    assert "host" in (run_dir / "results.csv").read_text().splitlines()[0].split(",")
    for host in HOSTS:
        assert f"| {host} " in report or f"|{host}|" in report
    text = "\n".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file()
                     and p.suffix not in (".npz", ".png", ".onnx"))
    leaked = [line for line in secrets_of(lab) if line in text]
    assert not leaked, "key or certificate content in the run directory"
    assert hostlab.docker0_exists()


def tls_engine(lab: dict[str, Any]) -> Engine:
    certs = lab["certs"]
    return hosts.connect(Host("tls-loopback", lab["tls"].url, tls_ca=str(certs["ca.pem"]),
                              tls_cert=str(certs["cert.pem"]), tls_key=str(certs["key.pem"])))


def test_a_remote_cell_container_holds_no_path_of_this_machine(lab: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """The container the runner makes on the TLS engine, inspected before its start: volumes
    only, the hardening unchanged; then run, it writes as uid 65534 and its files come back."""
    engine = tls_engine(lab)
    image = engine.image_id("debian:trixie")  # bootstrapped there by the run above
    if image is None:
        pytest.skip("run test_three_hosts_one_report first: it makes the TLS engine's base")
    run_dir = RunDir(tmp_path / "run", "r-inspect")
    (run_dir.inputs_dir / "mlp").mkdir(parents=True)
    (run_dir.inputs_dir / "mlp" / "model.onnx").write_bytes(b"onnx")
    labels = {**containers.MANAGED, containers.RUN_LABEL: run_dir.run_id,
              containers.OWNER_LABEL: f"test:{os.getpid()}"}
    engine.fill_volume("envmatrix-inputs-inspect", run_dir.inputs_dir, image=image,
                       target=str(containers.INPUTS_MOUNT), labels=labels)
    script = ("id -u > /envmatrix/out/uid && ls -ln /envmatrix/inputs/mlp > "
              "/envmatrix/out/inputs.txt && ! touch /envmatrix/inputs/x 2>/dev/null")
    spec = containers.cell_spec(run_dir, "c--mlp--cpu--host-tls-loopback", image=image,
                                image_id=image, command=["sh", "-c", script], memory_limit="1g",
                                pids_limit=64, cpuset=None, owner=f"test:{os.getpid()}",
                                inputs_volume="envmatrix-inputs-inspect")
    try:
        created = engine.create(spec)
        config = engine.container_attrs(created)["HostConfig"]
        engine.remove_labelled_containers({containers.RUN_LABEL: run_dir.run_id})
        print("REMOTE HostConfig:", json.dumps({k: config.get(k) for k in (
            "Binds", "Mounts", "ReadonlyRootfs", "NetworkMode", "CapDrop", "SecurityOpt")}))
        assert not config.get("Binds")
        assert {m["Type"] for m in config["Mounts"]} == {"volume"}
        assert str(tmp_path) not in json.dumps(config)
        assert not [m for m in config["Mounts"] if str(m.get("Source") or "").startswith("/")]
        assert (config["ReadonlyRootfs"], config["NetworkMode"], config["CapDrop"]) == (
            True, "none", ["ALL"])
        assert config["SecurityOpt"] == ["no-new-privileges"]
        out = run_dir.scratch(spec.labels[containers.CELL_LABEL])
        seen: list[dict[str, Any]] = []  # the container engine.run made (HostConfig is fixed
        got = engine.run(spec, timeout_s=120, copy_out=out,  # at create)
                         on_start=lambda cid: seen.append(engine.container_attrs(cid)))
        assert got.exit_code == 0, got.log
        mounts = seen[0]["HostConfig"]["Mounts"]
        print("REMOTE run mounts:", json.dumps(mounts))
        assert [(m["Type"], m["Target"], bool(m.get("ReadOnly"))) for m in mounts] == [
            ("volume", "/envmatrix/inputs", True), ("volume", "/envmatrix/out", False)]
        assert mounts[1]["Source"].startswith("envmatrix-scratch-")  # made writable for 65534
        assert str(tmp_path) not in json.dumps(seen[0]["HostConfig"])
        assert (out / "uid").read_text().strip() == "65534"
        assert "model.onnx" in (out / "inputs.txt").read_text()
    finally:
        engine.remove_labelled_containers({containers.RUN_LABEL: run_dir.run_id})
        engine.remove_volume("envmatrix-inputs-inspect")
    assert not engine.remove_labelled_volumes({containers.RUN_LABEL: run_dir.run_id})


def test_lost_host_then_resume(lab: dict[str, Any], tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "lost.yaml", lab, HOSTS, 6)
    run_dir = tmp_path / "lost"
    proc = cli(["matrix", "--matrix", str(matrix), "--out", str(run_dir)], lab, tmp_path)
    try:
        wait_for_round(run_dir, "tls-loopback", proc)
        lab["tls"].stop()  # mid-run: its cell is between or inside its rounds
    finally:
        code, err = finish(proc)
    assert code != 0
    lost = result(run_dir, "tls-loopback")
    print("UNREACHABLE:", lost["reason"])
    assert lost["status"] == "host_unreachable"
    assert "tls-loopback" in lost["reason"]
    for host in ("local", "ssh-loopback"):
        assert result(run_dir, host)["status"] == "ok"

    lab["tls"].start()
    code, err = finish(cli(["matrix", "--resume", str(run_dir)], lab, tmp_path))
    assert code == 0, err
    for host in HOSTS:
        assert result(run_dir, host)["status"] == "ok"
    assert hostlab.docker0_exists()


def wait_for_round(run_dir: Path, host: str, proc: subprocess.Popen[str]) -> None:
    """Until the host's cell started its second round (its image is built by then)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before the host could be stopped"
        try:
            doc = json.loads((run_dir / "rounds.json").read_text())
        except (OSError, ValueError):
            doc = {}
        entries = [e for e in doc.get("invocations", []) if e.get("host") == host]
        if entries and len(entries[-1].get("rounds", [])) >= 2:
            return
        time.sleep(0.2)
    raise AssertionError(f"{host} never reached its second round")
