"""The cost-of-compute figures without a runtime: the summary's aggregation over repeats, the
thread and CPU probes, and the fingerprint's listing of every installed distribution."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from envmatrix_harness import child, fingerprint, measure


def _threads(alive: int | None, requested: int | None = 2) -> dict:
    return {"intra_op_requested": requested, "inter_op_requested": None,
            "intra_op_effective": requested, "inter_op_effective": None,
            "alive_in_loop": alive, "cpus_available": 4}


def _repeat(index: int, cores: float, cold: float | None, alive: int | None) -> dict:
    latencies = [0.001 * (index + 1)] * 10
    return {"index": index, "session_create_s": 0.1, "first_inference_s": 0.01,
            "latencies_s": latencies, "measure_wall_s": sum(latencies),
            "cpu_time_s": cores * sum(latencies), "peak_rss_bytes": 1000,
            "cores_used": cores, "cpu_per_inference_s": cores * latencies[0],
            "import_s": 0.2 + index, "cold_start_s": cold, "threads": _threads(alive)}


def test_summary_takes_medians_of_the_cost_figures() -> None:
    repeats = [_repeat(0, 1.0, 0.5, 3), _repeat(1, 2.0, 0.7, 5), _repeat(2, 1.5, 0.6, 4)]
    summary = measure.summarize(repeats)
    assert summary["cores_used"] == pytest.approx(1.5)
    assert summary["cpu_per_inference_s"] == pytest.approx(0.004)  # of .001, .004, .0045
    assert summary["cold_start_s"] == pytest.approx(0.6)
    assert summary["import_s"] == pytest.approx(1.2)
    # the first repeat's block, with the most threads any repeat had alive
    assert summary["threads"] == dict(_threads(3), alive_in_loop=5)
    assert repeats[0]["threads"]["alive_in_loop"] == 3  # the repeat itself is left alone


def test_summary_keeps_its_existing_keys() -> None:
    repeats = [_repeat(0, 1.0, 0.5, 3), _repeat(1, 2.0, 0.7, 5)]
    summary = measure.summarize(repeats)
    assert summary["session_create_s"] == pytest.approx(0.1)
    assert summary["cpu_time_s"] == pytest.approx(sum(r["cpu_time_s"] for r in repeats))
    assert summary["iterations"] == 20 and summary["peak_rss_bytes"] == 1000
    assert set(summary) == {"iterations", "latency_s", "repeat_p50_s", "throughput_per_s",
                            "session_create_s", "first_inference_s", "peak_rss_bytes",
                            "cpu_time_s", "cores_used", "cpu_per_inference_s",
                            "cold_start_s", "import_s", "threads", "engine_build_s", "gpu",
                            # load scenarios (test_load_unit.py)
                            "batch", "concurrency", "scenario", "requests_per_s",
                            "samples_per_s", "cpu_per_sample_s"}
    assert summary["engine_build_s"] is None and summary["gpu"] is None  # CPU repeats


def test_summary_of_repeats_from_an_older_harness_has_nulls() -> None:
    """The host merges rounds with this code: repeats without the new keys must not break it."""
    old = {"index": 0, "session_create_s": 0.1, "first_inference_s": 0.01,
           "latencies_s": [0.001, 0.002], "measure_wall_s": 0.003, "cpu_time_s": 0.003,
           "peak_rss_bytes": 1000}
    summary = measure.summarize([old, dict(old, index=1)])
    for key in ("cores_used", "cpu_per_inference_s", "cold_start_s", "import_s", "threads"):
        assert summary[key] is None, key
    mixed = measure.summarize([old, _repeat(1, 2.0, None, None)])
    assert mixed["cores_used"] == 2.0 and mixed["cold_start_s"] is None
    assert mixed["threads"] == _threads(None)


def test_threads_alive_counts_this_process() -> None:
    alive = measure.threads_alive()
    if not Path("/proc/self/task").is_dir():
        assert alive is None
        return
    assert alive is not None and alive >= 1


def test_cpus_available_is_capped_by_a_cgroup_quota() -> None:
    count = measure.cpus_available()
    assert isinstance(count, int) and count >= 1
    assert measure.cpus_available(0.5) == 0.5
    assert measure.cpus_available(count + 8.0) == count
    assert measure.cpus_available(None) == count


def test_cold_start_needs_the_parents_clock() -> None:
    assert child._since(None) is None
    assert child._since(1e18) is None  # the clock stepped back: no figure rather than < 0
    assert child._since(0.0) >= 0


def _dist_info(folder: Path, entry: str, name: str, version: str) -> None:
    (folder / entry).mkdir()
    (folder / entry / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: not-a-header\n")


def test_scan_finds_every_kind_of_metadata_and_normalises_names(tmp_path: Path) -> None:
    site, later = tmp_path / "site", tmp_path / "later"
    site.mkdir()
    later.mkdir()
    _dist_info(site, "onnxruntime_openvino-1.24.1.dist-info", "onnxruntime-openvino", "1.24.1")
    _dist_info(site, "Foo.Bar-2.0.dist-info", "Foo.Bar", "2.0")
    egg_dir = site / "legacy-0.3-py3.6.egg-info"
    egg_dir.mkdir()
    (egg_dir / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: Legacy\nVersion: 0.3\n")
    (site / "single_file-1.1-py3.6.egg-info").write_text("Name: single_file\nVersion: 1.1\n")
    develop = site / "devpkg.egg-info"  # `setup.py develop`: no version in the folder's name
    develop.mkdir()
    (develop / "PKG-INFO").write_text("Name: devpkg\nVersion: 0.0.1.dev0\n")
    egg = site / "oldegg-4.2-py3.6.egg" / "EGG-INFO"
    egg.mkdir(parents=True)
    (egg / "PKG-INFO").write_text("Name: oldegg\nVersion: 4.2\n")
    (site / "protobuf-3.19.6-py3.6-nspkg.pth").write_text("")  # not a distribution
    _dist_info(later, "numpy-1.19.5.dist-info", "numpy", "1.19.5")
    _dist_info(later, "foo_bar-9.9.dist-info", "foo_bar", "9.9")  # shadowed by site's

    paths = [str(site), str(tmp_path / "missing"), str(later), str(site)]
    expected = {"onnxruntime-openvino": "1.24.1", "foo-bar": "2.0", "legacy": "0.3",
                "single-file": "1.1", "devpkg": "0.0.1.dev0", "oldegg": "4.2",
                "numpy": "1.19.5"}
    assert fingerprint.scan_distributions(paths=paths) == expected
    # folder names only (the fast lookup before session creation) agree on these
    assert fingerprint.scan_distributions(read_metadata=False, paths=paths) == expected


def test_scan_agrees_with_importlib_metadata_on_this_interpreter() -> None:
    """The 3.6/3.7 path against the 3.8+ one, on the test interpreter's own environment."""
    scanned = fingerprint.scan_distributions()
    listed = fingerprint.distributions()
    assert listed and scanned == listed
    assert "numpy" in listed and "pytest" in listed


def test_packages_lists_every_distribution_sorted() -> None:
    packages = fingerprint.packages()
    assert list(packages) == sorted(packages)
    assert {"numpy", "pytest", "pluggy"} <= set(packages)
    assert all(name == fingerprint.normalize_name(name) for name in packages)


def test_runtime_package_prefers_the_flavour(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    _dist_info(tmp_path, "onnxruntime_openvino-1.24.1.dist-info", "onnxruntime-openvino",
               "1.24.1")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert fingerprint.runtime_package() == ("onnxruntime-openvino", "1.24.1")
    assert fingerprint.runtime_package({"onnxruntime": "1.8.0"}) == ("onnxruntime", "1.8.0")


def test_torch_backend_reports_torchs_own_thread_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch is not installed here: a stand-in module proves the calls and the block's shape."""
    import types

    from envmatrix_harness import backends

    fake = types.ModuleType("torch")
    counts = {"intra": 8, "inter": 4}
    fake.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    fake.cuda = types.SimpleNamespace(is_available=lambda: False)  # type: ignore[attr-defined]
    fake.set_num_threads = lambda n: counts.update(intra=n)  # type: ignore[attr-defined]
    fake.get_num_threads = lambda: counts["intra"]  # type: ignore[attr-defined]
    fake.get_num_interop_threads = lambda: counts["inter"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    settings = {"provider": "cpu", "provider_options": {}, "threads": 2}
    backend = backends.TorchBackend(settings, {"path": "net.pt"})
    assert backend.import_s >= 0
    assert backend.threads() == {"intra_op_requested": 2, "inter_op_requested": None,
                                 "intra_op_effective": 2, "inter_op_effective": 4}
