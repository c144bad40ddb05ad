"""Hosts without Docker: the hosts: section, cell ids, contexts, scheduling with fake engines,
and the report's host column."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakeruns import IMAGES, make_plan, prepared, run_with_inputs
from fakes import FakeEngine, harness_ok

from envmatrix import pipeline, schedule
from envmatrix.analysis import stats
from envmatrix.config import load as config
from envmatrix.config.hosts import spread
from envmatrix.errors import ConfigError, HostUnreachableError
from envmatrix.report.sections import TABLE_HEADERS, with_host_column
from envmatrix.rundir.layout import RunDir
from envmatrix.rundir.looks import read_looks
from envmatrix.rundir.plan import Cell, Host, Plan
from envmatrix.running import hosts
from envmatrix.running.containers import ContainerSpec
from envmatrix.running.engine import ContainerOutcome

MATRIX = """\
version: 1
bases:
  trixie: {image: "debian:trixie"}
hosts:
%s
environments:
  - base: trixie
    packages: {onnxruntime: "1.32.0"}
  - base: trixie
    packages: {onnxruntime: "1.20.0"}
%s
workloads:
  mlp: {model: "zoo:mlp"}
"""
THREE = """\
  local:
  tls-box:
    url: tcp://127.0.0.1:2376
    tls: {ca: certs/ca.pem, cert: certs/cert.pem, key: certs/key.pem}
  gpu-box: {context: gpu-box, labels: {gpu: true}}"""


def load(tmp_path: Path, hosts_text: str, selector: str = "") -> Plan:
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX % (hosts_text, selector))
    return config.load_plan(path)


def test_three_hosts_spread_every_cell_and_name_it(tmp_path: Path) -> None:
    plan = load(tmp_path, THREE)
    assert [h.name for h in plan.hosts] == ["local", "tls-box", "gpu-box"]
    assert len(plan.cells) == 6
    assert "trixie-ort1.32.0--mlp--cpu--host-tls-box" in {c.id for c in plan.cells}
    tls = plan.hosts[1]
    assert tls.tls_cert == str(tmp_path / "certs" / "cert.pem")  # relative to the matrix file
    assert plan.hosts[2].address == "context:gpu-box" and plan.hosts[2].label_dict == {
        "gpu": "true"}


def test_one_host_keeps_the_ids(tmp_path: Path) -> None:
    plan = load(tmp_path, "  only: {url: 'ssh://bench@10.0.0.5'}")
    assert [c.id for c in plan.cells] == ["trixie-ort1.32.0--mlp--cpu",
                                          "trixie-ort1.20.0--mlp--cpu"]
    assert {c.host for c in plan.cells} == {"only"}
    assert not plan.multi_host


def test_labels_and_names_select_hosts(tmp_path: Path) -> None:
    plan = load(tmp_path, THREE, "    hosts: {gpu: true}")
    ids = [c.id for c in plan.cells if c.environment.id == "trixie-ort1.20.0"]
    assert ids == ["trixie-ort1.20.0--mlp--cpu--host-gpu-box"]
    plan = load(tmp_path, THREE, "    hosts: [local, tls-box]")
    assert [c.host for c in plan.cells if c.environment.id == "trixie-ort1.20.0"] == [
        "local", "tls-box"]


@pytest.mark.parametrize(("hosts_text", "selector", "words"), [
    (THREE, "    hosts: [tls-bx]", "did you mean 'tls-box'"),
    (THREE, "    hosts: {gpu: maybe}", "no host has the labels"),
    ("  a: {context: x, url: 'tcp://h:1'}", "", "either context: or url:"),
    ("  a: {url: 'ssh://h', tls: {cert: c, key: k}}", "", "tls: applies to a tcp:// url only"),
    ("  a: {url: 'http://h'}", "", "is not a Docker engine address"),
    ("  a: {adress: 'tcp://h:1'}", "", "unknown key 'adress'"),
])  # fmt: skip
def test_host_problems_in_our_words(tmp_path: Path, hosts_text: str, selector: str,
                                    words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, hosts_text, selector)
    assert words in str(err.value)


def test_a_context_is_read_from_the_cli_store(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"gpu-box").hexdigest()
    meta = tmp_path / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": "gpu-box", "Endpoints": {
        "docker": {"Host": "tcp://10.0.0.9:2376", "SkipTLSVerify": False}}}))
    tls = tmp_path / "contexts" / "tls" / digest / "docker"
    tls.mkdir(parents=True)
    for name in ("ca", "cert", "key"):
        (tls / f"{name}.pem").write_text("x")
    target = hosts.context_target("gpu-box", tmp_path)
    assert target.base_url == "tcp://10.0.0.9:2376"
    assert target.tls_key == str(tls / "key.pem") and target.tls_verify
    with pytest.raises(HostUnreachableError, match="does not exist"):
        hosts.context_target("nope", tmp_path)


def test_the_baseline_cell_is_on_the_candidates_host(tmp_path: Path) -> None:
    plan = load(tmp_path, THREE, "    hosts: [tls-box]")
    cand = next(c for c in plan.cells if c.environment.id == "trixie-ort1.20.0")
    base, notes = stats.match_baseline(plan.cells, plan.baseline, cand)
    assert base is not None and base.host == "tls-box" and notes == []
    other = replace(cand, host="elsewhere")
    base, notes = stats.match_baseline(plan.cells, plan.baseline, other)
    assert notes == [stats.CROSS_HOST_NOTE]


# -- scheduling with fake engines -------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDir:
    return run_with_inputs(tmp_path)


@dataclass
class FakeHostEngine(FakeEngine):
    """The shared fake engine, counting the containers that run at the same time."""

    name: str = ""
    gauge: dict[str, Any] = field(default_factory=dict)
    delay_s: float = 0.05

    def run(self, spec: ContainerSpec, **kw: Any) -> ContainerOutcome:
        with self.gauge["lock"]:
            self.gauge["now"][self.name] += 1
            self.gauge["max"][self.name] = max(self.gauge["max"][self.name],
                                               self.gauge["now"][self.name])
            self.gauge["all"] = max(self.gauge["all"], sum(self.gauge["now"].values()))
        try:
            time.sleep(self.delay_s)
            return super().run(spec, **kw)
        finally:
            with self.gauge["lock"]:
                self.gauge["now"][self.name] -= 1


def two_host_plan(tmp_path: Path) -> Plan:
    plan = make_plan(tmp_path)
    machines = (Host("a"), Host("b", "tcp://127.0.0.1:1"))
    cells = spread(plan.cells, {e.id: ["a", "b"] for e in plan.environments}, machines)
    return replace(plan, cells=tuple(cells), hosts=machines)


def stages(engines: dict[str, Any], unreachable: str | None = None) -> schedule.Stages:
    def connect(host: Host) -> Any:
        if host.name == unreachable:
            raise HostUnreachableError(f"host {host.name} cannot be reached: TLS handshake "
                                       "failed")
        return engines[host.name]

    def ensure(engine: Any, plan: Plan, **kw: Any) -> dict[str, Any]:
        return {e.id: IMAGES[e.id] for e in plan.environments}

    return schedule.Stages(connect=connect, fingerprint=lambda e: {"engine_version": "27.0",
                                                                  "cpus": 2},
                           sweep=lambda e: 0, images=ensure)


def engines_for(**lost: int) -> dict[str, FakeHostEngine]:
    gauge = {"lock": threading.Lock(), "now": {"a": 0, "b": 0}, "max": {"a": 0, "b": 0},
             "all": 0}
    return {name: FakeHostEngine(name=name, gauge=gauge, lost_after=lost.get(name))
            for name in ("a", "b")}


def ok_everywhere(engines: dict[str, FakeHostEngine], plan: Plan) -> None:
    for engine in engines.values():
        engine.behaviours = {c.id: harness_ok for c in plan.cells}


def run_two_hosts_ok(tmp_path: Path, run_dir: RunDir
                     ) -> tuple[Plan, dict[str, FakeHostEngine], Any, list[str]]:
    """The two-host plan (a: the default engine, b: tcp://, another machine) run with every
    cell ok: the plan, the engines, what run_hosts returned and the progress messages."""
    plan = two_host_plan(tmp_path)
    engines = engines_for()
    ok_everywhere(engines, plan)
    said: list[str] = []
    spread = schedule.run_hosts(plan, run_dir, prepared(run_dir),
                                lambda s, m: said.append(m), stages=stages(engines))
    assert [r["status"] for r in spread.results] == ["ok"] * 4
    return plan, engines, spread, said


def test_hosts_measure_in_parallel_one_cell_at_a_time_each(tmp_path: Path,
                                                           run_dir: RunDir) -> None:
    _, engines, spread, said = run_two_hosts_ok(tmp_path, run_dir)
    gauge = engines["a"].gauge
    assert gauge["max"] == {"a": 1, "b": 1}  # never two containers on one host
    assert gauge["all"] == 2  # the hosts did measure at the same time
    assert spread.results[0]["host"]["machine"]["name"] == "a"
    assert any(m.startswith("a: ") for m in said) and any(m.startswith("b: ") for m in said)
    orders = json.loads((run_dir.path / "rounds.json").read_text())["invocations"]
    assert sorted(e["host"] for e in orders) == ["a", "b"]  # neither thread clobbered the other


def test_each_host_looks_at_its_own_cells_and_records_its_looks(tmp_path: Path,
                                                                run_dir: RunDir) -> None:
    """The pipeline's cells stage builds one Monitor per host from the cells it measures;
    each host adds its own entry to looks.json, beside the other's."""
    plan = two_host_plan(tmp_path)
    engines = engines_for()
    ok_everywhere(engines, plan)
    cells = pipeline.cells_stage(plan, None)
    spread = schedule.run_hosts(plan, run_dir, prepared(run_dir), lambda s, m: None,
                                stages=replace(stages(engines), cells=cells))
    assert [r["status"] for r in spread.results] == ["ok"] * 4
    looks = read_looks(run_dir)
    assert looks is not None
    assert sorted(str(e.get("host")) for e in looks["invocations"]) == ["a", "b"]


def test_an_unreachable_host_gets_its_own_status(tmp_path: Path, run_dir: RunDir) -> None:
    plan = two_host_plan(tmp_path)
    engines = engines_for()
    ok_everywhere(engines, plan)
    spread = schedule.run_hosts(plan, run_dir, prepared(run_dir), lambda s, m: None,
                                stages=stages(engines, unreachable="b"))
    by_host = {r["cell"]: r for r in spread.results}
    for cell in plan.cells:
        status = by_host[cell.id]["status"]
        assert status == ("ok" if cell.host == "a" else "host_unreachable")
    lost = next(r for r in spread.results if r["status"] == "host_unreachable")
    assert "TLS handshake failed" in lost["reason"]
    assert spread.record()["b"]["unreachable"]


def test_a_host_lost_mid_run_settles_its_remaining_cells(tmp_path: Path,
                                                         run_dir: RunDir) -> None:
    plan = two_host_plan(tmp_path)
    engines = engines_for(b=1)
    ok_everywhere(engines, plan)
    spread = schedule.run_hosts(plan, run_dir, prepared(run_dir), lambda s, m: None,
                                stages=stages(engines))
    statuses = {r["cell"]: r["status"] for r in spread.results}
    assert all(s == "ok" for c, s in statuses.items() if c.endswith("--host-a"))
    assert all(s == "host_unreachable" for c, s in statuses.items() if c.endswith("--host-b"))


def test_ctrl_c_stops_every_host(tmp_path: Path, run_dir: RunDir) -> None:
    plan = two_host_plan(tmp_path)
    engines = engines_for()
    ok_everywhere(engines, plan)
    for engine in engines.values():
        engine.delay_s = 0.3
    timer = threading.Timer(0.5, lambda: schedule.interrupt(runs_seen))
    runs_seen: list[schedule.HostRun] = []
    real_main = schedule._host_main

    def spy(run: schedule.HostRun, *args: Any) -> None:
        runs_seen.append(run)
        real_main(run, *args)

    schedule._host_main = spy  # type: ignore[assignment]
    try:
        timer.start()
        spread = schedule.run_hosts(plan, run_dir, prepared(run_dir), lambda s, m: None,
                                    stages=stages(engines))
    finally:
        schedule._host_main = real_main  # type: ignore[assignment]
        timer.cancel()
    assert spread.interrupted
    assert all(not (r.thread and r.thread.is_alive()) for r in spread.runs)
    assert not engines["b"].volumes  # the remote host's inputs volume went with Ctrl-C
    statuses = {p.stem: json.loads(p.read_text())["status"]
                for p in (run_dir.path / "results").glob("*.json")}
    assert "interrupted" in statuses.values() or len(statuses) < len(plan.cells)


# -- report --------------------------------------------------------------------------------------


def test_the_table_gains_a_host_column_only_with_several_hosts(tmp_path: Path) -> None:
    plan = load(tmp_path, THREE, "    hosts: [tls-box]")
    cand = next(c for c in plan.cells if c.environment.id == "trixie-ort1.20.0")
    verdict = SimpleNamespace(notes=(stats.CROSS_HOST_NOTE,))
    data = SimpleNamespace(plan=plan, verdict_of=lambda cid: verdict)
    headers, rows = with_host_column(data, [cand], [["env", "CPU", "faster"]])  # type: ignore[arg-type]
    assert headers[:2] == ("environment", "host")
    assert rows == [["env", "tls-box", "CPU", "faster (cross-host)"]]
    single = SimpleNamespace(plan=replace(plan, hosts=plan.hosts[:1]), verdict_of=lambda c: None)
    headers, rows = with_host_column(single, [cand], [["env"]])  # type: ignore[arg-type]
    assert headers == TABLE_HEADERS and rows == [["env"]]


def test_cells_keep_their_host_in_the_resolved_plan(tmp_path: Path) -> None:
    from envmatrix.rundir import plan as planmod

    plan = load(tmp_path, THREE)
    doc = planmod.plan_to_dict(plan)
    assert "cert.pem" not in json.dumps(doc)  # names, addresses, labels: no TLS paths
    back = planmod.plan_from_dict({**doc, "run": {}}).plan
    assert [c.host for c in back.cells] == [c.host for c in plan.cells]
    assert [h.name for h in back.hosts] == ["local", "tls-box", "gpu-box"]
    assert isinstance(back.cells[0], Cell)


# -- hosts that do not share this machine's paths -----------------------------------------------


@pytest.mark.parametrize(("address", "setting", "shared"), [
    ("default", None, True),
    ("unix:///run/other/docker.sock", None, True),
    ("tcp://10.0.0.5:2376", None, False),
    ("tcp://127.0.0.1:2376", None, False),  # loopback too: it may be another engine's data root
    ("ssh://bench@10.0.0.6", None, False),
    ("tcp://10.0.0.5:2376", True, True),  # the user knows better: a shared filesystem
    ("default", False, False),
])  # fmt: skip
def test_which_hosts_share_this_machines_paths(address: str, setting: bool | None,
                                               shared: bool) -> None:
    assert hosts.shares_paths(Host("h", address, shared_paths=setting)) is shared


def test_a_context_shares_paths_when_it_points_at_a_socket(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    for name, address in (("box", "tcp://10.0.0.9:2376"), ("here", "unix:///var/run/d.sock")):
        meta = tmp_path / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
        meta.mkdir(parents=True)
        (meta / "meta.json").write_text(json.dumps({"Endpoints": {"docker": {"Host": address}}}))
    assert not hosts.shares_paths(Host("h", "context:box"))
    assert hosts.shares_paths(Host("h", "context:here"))
    assert hosts.shares_paths(Host("h", "context:default"))


def test_shared_paths_is_read_and_recorded(tmp_path: Path) -> None:
    from envmatrix.rundir import plan as planmod

    plan = load(tmp_path, THREE.replace("    url: tcp://127.0.0.1:2376\n",
                                        "    url: tcp://127.0.0.1:2376\n    shared_paths: true\n"))
    assert [h.shared_paths for h in plan.hosts] == [None, True, None]
    back = planmod.plan_from_dict({**planmod.plan_to_dict(plan), "run": {}}).plan
    assert [h.shared_paths for h in back.hosts] == [None, True, None]
    with pytest.raises(ConfigError, match="shared_paths"):
        load(tmp_path, "  a: {url: 'tcp://h:1', shared_paths: sometimes}")


def test_a_remote_host_gets_the_inputs_once_and_its_results_back(tmp_path: Path,
                                                               run_dir: RunDir) -> None:
    plan, engines, spread, said = run_two_hosts_ok(tmp_path, run_dir)
    a, b = engines["a"], engines["b"]
    assert all(spec.mount_type == "bind" for spec in a.runs) and not a.volume_log
    name = schedule.inputs_volume_name(run_dir, "b")
    assert b.volume_log == ["sweep", f"fill {name}", f"remove {name}"]  # once per run and host
    assert len(b.runs) == 2 * plan.measure.round_count
    assert all(spec.mounts == [(name, "/envmatrix/inputs", True), ("", "/envmatrix/out", False)]
               for spec in b.runs)
    remote = [r for r in spread.results if r["cell"].endswith("--host-b")]
    assert all(r["host"]["outputs"] for r in remote)  # outputs.npz came back and was kept
    assert [r["host"]["machine"]["shared_paths"] for r in spread.results] == [True, False] * 2
    assert spread.record()["b"]["shared_paths"] is False
    assert any("b: " in m and "copied through volumes" in m for m in said)


def test_inputs_that_cannot_be_copied_make_the_host_unusable(tmp_path: Path,
                                                             run_dir: RunDir) -> None:
    plan = two_host_plan(tmp_path)
    engines = engines_for()
    ok_everywhere(engines, plan)
    engines["b"].fill_fails = True
    spread = schedule.run_hosts(plan, run_dir, prepared(run_dir), lambda s, m: None,
                                stages=stages(engines))
    lost = [r for r in spread.results if r["cell"].endswith("--host-b")]
    assert [r["status"] for r in lost] == ["host_unreachable"] * 2
    assert "could not copy the run's inputs" in lost[0]["reason"]
    assert "no space left on device" in lost[0]["reason"]
    assert engines["b"].volume_log[-1].startswith("remove ")  # the half-made volume too
    assert not engines["b"].runs


def test_a_lost_remote_host_leaves_its_volume_to_the_sweep(tmp_path: Path,
                                                          run_dir: RunDir) -> None:
    plan = two_host_plan(tmp_path)
    engines = engines_for(b=1)
    ok_everywhere(engines, plan)
    said: list[str] = []
    spread = schedule.run_hosts(plan, run_dir, prepared(run_dir),
                                lambda s, m: said.append(m), stages=stages(engines))
    assert {r["status"] for r in spread.results if r["cell"].endswith("--host-b")} == {
        "host_unreachable"}
    assert any("was left behind" in m and "nox -s clean" in m for m in said)
