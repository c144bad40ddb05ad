"""GPU cells without a GPU: the CUDA/cuDNN table and its config refusals, the `gpus:` settings,
which cells ask for GPUs, and how the engine's refusal of a GPU is recognised (status no_gpu).

The engine side runs for real in tests/integration/test_gpu_engine.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from envmatrix import toolwords
from envmatrix.config import gpucompat
from envmatrix.config import load as config
from envmatrix.errors import ConfigError
from envmatrix.images.render import render_dockerfile
from envmatrix.rundir import results
from envmatrix.rundir.plan import Base, Environment, plan_to_dict

# HEAD declares more bases than most tests use; that warning has its own test in test_config.
pytestmark = pytest.mark.filterwarnings("ignore:.*are declared but no environment uses them")
REPO = Path(__file__).resolve().parents[2]

HEAD = """\
version: 1
bases:
  cuda10: {image: "nvidia/cuda:10.2-cudnn8-runtime-ubuntu18.04", cuda: "10.2", cudnn: "8"}
  cuda11: {image: "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04", cuda: "11.8", cudnn: "8"}
  cuda12: {image: "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04", cuda: "12.4", cudnn: "9"}
  cuda12c8: {image: "nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04", cuda: "12.2", cudnn: "8"}
  plain: {image: "debian:bookworm"}
workloads:
  cnn: {model: "zoo:cnn"}
build: {ca_bundle: null}
"""


def load(tmp_path: Path, body: str, head: str = HEAD) -> config.Plan:
    path = tmp_path / "matrix.yaml"
    path.write_text(head + textwrap.dedent(body))
    return config.load_plan(path)


def refusal(tmp_path: Path, base: str, version: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f"""\
            environments:
              - {{base: {base}, packages: {{onnxruntime-gpu: "{version}"}}, providers: [cuda]}}
            """)
    return str(err.value)


# -- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "cuda", "cudnn"), [
    ("1.5.1", "10.2", "8.0.3"), ("1.6.0", "10.2", "8.0.3"), ("1.8.1", "11.0.3", "8.0.4"),
    ("1.12.1", "11.4", "8.2.4"), ("1.14.1", "11.6", "8.2.4"), ("1.18.1", "11.8", "8.2.4"),
    ("1.19.2", "12", "9"), ("1.21.1", "12", "9"), ("1.22.0", "12", "9"), ("1.31.1", "12", "9"),
])  # fmt: skip
def test_what_pypis_wheel_of_each_release_is_built_for(version: str, cuda: str,
                                                       cudnn: str) -> None:
    row = gpucompat.row_of(version)
    assert row is not None and (row.pypi.cuda, row.pypi.cudnn) == (cuda, cudnn)


def test_the_table_has_no_gaps_or_overlaps() -> None:
    for older, newer in zip(gpucompat.TABLE, gpucompat.TABLE[1:]):
        assert older.last is not None and newer.first == (older.last[0], older.last[1] + 1)
    assert gpucompat.TABLE[-1].last is None


def test_cuda_minor_versions_are_compatible_from_cuda_11_on() -> None:
    assert gpucompat.cuda_runs("11.8", "11.2") and gpucompat.cuda_runs("11.0.3", "11.8")
    assert gpucompat.cuda_runs("12", "12.8") and not gpucompat.cuda_runs("12", "11.8")
    assert gpucompat.cuda_runs("10.2", "10.2") and not gpucompat.cuda_runs("10.1", "10.2")
    assert not gpucompat.cuda_runs("11.8", "10.2")
    assert gpucompat.cudnn_runs("8.2.4", "8.9") and not gpucompat.cudnn_runs("8", "9.1")


def test_releases_for_a_base_are_joined_spans_newest_first() -> None:
    assert gpucompat.releases_for("11.8", "8") == ["1.7-1.18"]
    assert gpucompat.releases_for("10.2", None) == ["1.5-1.6"]
    assert gpucompat.releases_for("12.4", "9") == ["1.19 and later"]
    assert gpucompat.releases_for("12.4", "8") == []


# -- the config check -----------------------------------------------------------------------


def test_a_cuda_12_release_on_a_cuda_11_base_is_refused(tmp_path: Path) -> None:
    text = refusal(tmp_path, "cuda11", "1.20.1")
    assert "environments[0].packages.onnxruntime-gpu" in text
    assert ("onnxruntime-gpu 1.20.1 needs CUDA 12.x with cuDNN 9.x (the wheel PyPI serves), "
            "but base 'cuda11' provides CUDA 11.8 with cuDNN 8.") in text
    assert "Fix: pin a release built for CUDA 11.8 with cuDNN 8: onnxruntime-gpu 1.7-1.18" in text
    assert "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04" in text
    # 1.19-1.21 were also built for CUDA 11.8 on a separate index: the fix says how to get it.
    assert "build.pip_index_url" in text


def test_the_other_index_build_is_accepted_when_an_index_is_set(tmp_path: Path) -> None:
    head = HEAD.replace("build: {ca_bundle: null}", "build: {ca_bundle: null, pip_index_url: "
                        '"https://ort-cuda11.example.org/simple"}')
    plan = load(tmp_path, """\
        environments:
          - {base: cuda11, packages: {onnxruntime-gpu: "1.20.1"}, providers: [cuda]}
        """, head)
    assert [c.provider for c in plan.cells] == ["cuda"]


def test_1_22_on_cuda_11_8_is_refused(tmp_path: Path) -> None:
    text = refusal(tmp_path, "cuda11", "1.22.0")
    assert ("onnxruntime-gpu 1.22.0 needs CUDA 12.x with cuDNN 9.x (the wheel PyPI serves), "
            "but base 'cuda11' provides CUDA 11.8 with cuDNN 8.") in text
    assert "onnxruntime-gpu 1.7-1.18" in text and "pip_index_url" not in text


def test_a_cuda_12_release_on_cuda_10_2_is_refused(tmp_path: Path) -> None:
    text = refusal(tmp_path, "cuda10", "1.19.2")
    assert "base 'cuda10' provides CUDA 10.2 with cuDNN 8." in text
    assert "Fix: pin a release built for CUDA 10.2 with cuDNN 8: onnxruntime-gpu 1.5-1.6" in text
    assert "pip_index_url" not in text  # its CUDA 11.8 build would not run on 10.2 either


def test_a_cudnn_mismatch_is_refused(tmp_path: Path) -> None:
    text = refusal(tmp_path, "cuda12c8", "1.20.1")
    assert "base 'cuda12c8' provides CUDA 12.2 with cuDNN 8." in text
    assert "no onnxruntime-gpu wheel on PyPI is built for CUDA 12.2 with cuDNN 8" in text
    assert "cudnn: \"9\"" in text


def test_matching_pairs_pass(tmp_path: Path) -> None:
    plan = load(tmp_path, """\
        environments:
          - {base: cuda10, packages: {onnxruntime-gpu: "1.6.0", numpy: "1.19.5"}, providers: [cuda]}
          - {base: cuda11, packages: {onnxruntime-gpu: "1.18.1", numpy: "1.26"}, providers: [cuda]}
          - {base: cuda12, packages: {onnxruntime-gpu: "1.22.0"}, providers: [cuda, cpu]}
        """)
    assert len(plan.cells) == 4
    assert not [w for w in plan.extra["warnings"] if "CUDA" in w]


def test_a_pin_on_a_base_without_cuda_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(HEAD + textwrap.dedent("""\
        environments:
          - {base: plain, packages: {onnxruntime-gpu: "1.20.1"}, providers: [cuda, cpu]}
        """))
    with pytest.warns(config.ConfigWarning, match="declares no CUDA version") as seen:
        config.load_plan(path)
    note = next(str(w.message) for w in seen if "CUDA" in str(w.message))
    assert "it needs CUDA 12.x with cuDNN 9.x" in note and "bases.plain.cuda" in note


def test_old_onnxruntime_releases_are_accepted(tmp_path: Path) -> None:
    """Down to 1.5, the oldest onnxruntime-gpu with a CUDA 10.2 wheel (for Python 3.6); 1.5
    reads ONNX IR 7, so the default model_export needs no change."""
    plan = load(tmp_path, """\
        environments:
          - {base: cuda10, packages: {onnxruntime-gpu: "1.5.1", numpy: "1.19.5"}, providers: [cuda]}
          - {base: plain, packages: {onnxruntime: "1.5.1", numpy: "1.19.5"}, id: cpu15}
        """)
    assert [c.id for c in plan.cells] == ["cuda10-ortgpu1.5.1--cnn--cuda", "cpu15--cnn--cpu"]


def test_cudnn_and_gpus_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a cuDNN version"):
        load(tmp_path, """\
            environments: [{base: cuda12, packages: {onnxruntime: "1.20.1"}}]
            """, HEAD.replace('cudnn: "9"', 'cudnn: "nine"'))
    for bad in ('"0;1"', '"all,0"', '"device=0"', '"-1"'):
        with pytest.raises(ConfigError, match="GPU indexes or UUIDs"):
            load(tmp_path, f"""\
                environments: [{{base: cuda12, packages: {{onnxruntime-gpu: "1.22.0"}},
                                 providers: [cuda], gpus: {bad}}}]
                """)


# -- which cells ask for which GPUs ---------------------------------------------------------


def test_gpu_cells_get_the_environments_gpus_else_the_runs(tmp_path: Path) -> None:
    plan = load(tmp_path, """\
        environments:
          - {base: cuda12, packages: {onnxruntime-gpu: "1.22.0"}, providers: [cuda, tensorrt, cpu]}
          - {base: cuda12, id: pinned, packages: {onnxruntime-gpu: "1.22.0"}, providers: [cuda],
             gpus: "0,GPU-4a2b7c1e-0000-1111-2222-333344445555"}
        measure: {gpus: "1"}
        """)
    assert {c.id: c.gpus for c in plan.cells} == {
        "cuda12-ortgpu1.22.0--cnn--cuda": "1", "cuda12-ortgpu1.22.0--cnn--tensorrt": "1",
        "cuda12-ortgpu1.22.0--cnn--cpu": None,
        "pinned--cnn--cuda": "0,GPU-4a2b7c1e-0000-1111-2222-333344445555"}
    assert plan.measure.gpus == "1"
    # The resolved plan keeps them, and reads them back.
    back = config.planmod.plan_from_dict(plan_to_dict(plan)).plan
    assert [c.gpus for c in back.cells] == [c.gpus for c in plan.cells]


def test_gpus_default_to_all(tmp_path: Path) -> None:
    plan = load(tmp_path, """\
        environments:
          - {base: cuda12, packages: {onnxruntime-gpu: "1.22.0"}, providers: [cuda, cpu]}
        """)
    assert [c.gpus for c in plan.cells] == ["all", None]


def test_gpu_settings_leave_cpu_cells_hashes_alone(tmp_path: Path) -> None:
    body = """\
        environments:
          - {base: cuda12, packages: {onnxruntime-gpu: "1.22.0"}, providers: [cuda, cpu]GPUS}
        """
    one = load(tmp_path, body.replace("GPUS", ""))
    two = load(tmp_path, body.replace("GPUS", ', gpus: "0"'))
    hashes = [[c.config_hash(p.measure) for c in p.cells] for p in (one, two)]
    assert hashes[0][0] != hashes[1][0]  # the cuda cell: other GPUs, other numbers
    assert hashes[0][1] == hashes[1][1]  # the cpu cell: untouched


def test_hash_of_a_cpu_cell_is_what_it_was_before_gpus_existed() -> None:
    """Results measured before the GPU settings existed must stay current (not stale)."""
    plan = config.load_plan(REPO / "tests" / "integration" / "matrices" / "two_envs.yaml")
    assert [c.config_hash(plan.measure) for c in plan.cells] == [
        "1f2905684ebcddbb", "96eee9d5e42b4ac9"]


# -- the engine's refusal -------------------------------------------------------------------

# Engine messages as docker, CDI and the NVIDIA container toolkit word them.
NO_GPU_TEXTS = [
    'could not select device driver "" with capabilities: [[gpu]]',
    "failed to create task for container: failed to create shim task: OCI runtime create failed: "
    "could not apply required modification to OCI specification: error modifying OCI spec: "
    "failed to inject CDI devices: unresolvable CDI devices nvidia.com/gpu=all: unknown",
    "OCI runtime create failed: container_linux.go:380: starting container process caused: "
    "process_linux.go:545: container init caused: Running hook #0:: error running hook: exit "
    "status 1, stdout: , stderr: nvidia-container-cli: initialization error: nvml error: driver "
    "not loaded: unknown",
    "failed to create shim task: OCI runtime create failed: runc create failed: unable to start "
    "container process: error during container init: error running hook #0: error running hook: "
    "exit status 1, stdout: , stderr: Auto-detected mode as 'legacy'\nnvidia-container-cli: "
    "requirement error: unsatisfied condition: cuda>=12.4, please update your driver to a newer "
    "version, or use an earlier cuda container: unknown",
    'error gathering device information while adding custom device "/dev/nvidia0": no such '
    "file or directory",
]
OTHER_TEXTS = [
    "No such image: sha256:aa",
    'failed to create task for container: failed to create shim task: OCI runtime create '
    'failed: runc create failed: unable to start container process: exec: "python": '
    "executable file not found in $PATH: unknown",
    "Conflict. The container name \"/x\" is already in use",
]


@pytest.mark.parametrize("text", NO_GPU_TEXTS)
def test_the_engines_gpu_refusals_are_recognised(text: str) -> None:
    assert toolwords.gpu_unavailable(text)


@pytest.mark.parametrize("text", OTHER_TEXTS)
def test_other_engine_errors_are_not_no_gpu(text: str) -> None:
    assert not toolwords.gpu_unavailable(text)


def test_no_gpu_is_a_status() -> None:
    assert "no_gpu" in results.STATUSES
    assert "no_gpu" in (REPO / "docs" / "result-schema.md").read_text()


# -- the example ----------------------------------------------------------------------------


def test_the_cuda_example_is_true_to_the_table_and_renders() -> None:
    plan = config.load_plan(REPO / "examples" / "cuda-upgrade.yaml")
    for env in plan.environments:
        assert gpucompat.check(env) == []
        text = render_dockerfile(env, plan)
        assert f"ARG BASE_IMAGE={env.base.image}" in text
    old, new = plan.environment("cuda10-bionic-ortgpu1.6.0"), plan.environment(
        "cuda12-jammy-ortgpu1.22.0")
    assert (old.base.cuda, old.base.cudnn, new.base.cuda, new.base.cudnn) == ("10.2", "8",
                                                                              "12.4", "9")
    assert {c.id: c.gpus for c in plan.cells if c.gpus} == {
        "cuda10-bionic-ortgpu1.6.0--cnn--cuda": "all",
        "cuda10-bionic-ortgpu1.6.0--transformer--cuda": "all",
        "cuda12-jammy-ortgpu1.22.0--cnn--cuda": "0",
        "cuda12-jammy-ortgpu1.22.0--transformer--cuda": "0"}


def test_no_base_is_needed_to_check_an_environment() -> None:
    env = Environment("e", Base("b", "img", "ubuntu", cuda="11.8"), "system",
                      (("onnxruntime-gpu", "1.19.2"),), ("cuda",))
    ((key, message, _),) = gpucompat.check(env)
    assert key == ("packages", "onnxruntime-gpu") and "CUDA 11.8." in message
    assert gpucompat.check(env, other_index=True) == []
