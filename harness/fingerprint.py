"""Where a measurement was taken: interpreter, OS, C library, CPU, limits, packages, devices.

Every probe is best-effort: a missing file or tool yields null, never an exception, because
the fingerprint must not be the reason a measurement fails.
"""

import os
import platform
import shutil
import subprocess
import sys

# The CPU flags that decide which kernels inference runtimes pick.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

# Distributions of the runtime stack, reported with their versions when installed; names
# starting with these prefixes are reported too (onnxruntime-gpu, nvidia-cudnn-cu12, ...).
PACKAGES = ("numpy", "onnxruntime", "openvino", "torch", "protobuf", "flatbuffers", "mkl",
            "intel-openmp", "tensorrt")
PACKAGE_PREFIXES = ("onnxruntime", "openvino", "nvidia-", "torch", "tensorrt")

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY",
            "CUDA_VISIBLE_DEVICES", "ORT_TENSORRT_FP16_ENABLE", "ENVMATRIX_BASE_IMAGE",
            "ENVMATRIX_IMAGE_ID", "ENVMATRIX_ENVIRONMENT")


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (OSError, IOError, UnicodeDecodeError):
        return None


def os_release():
    fields = {}
    for line in (_read("/etc/os-release") or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return {"pretty_name": fields.get("PRETTY_NAME"), "id": fields.get("ID"),
            "version_id": fields.get("VERSION_ID"), "kernel": platform.release()}


def glibc_version():
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
        if text and text.startswith("glibc "):
            return text.split()[1]
    except (AttributeError, ValueError, OSError):
        pass
    return platform.libc_ver()[1] or None


def cpu_info():
    model, flags = None, set()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"model": model or platform.processor() or None,
            "flags": [flag for flag in CPU_FLAGS if flag in flags],
            "cores_visible": len(affinity) if affinity is not None else os.cpu_count(),
            "cores_total": os.cpu_count(), "affinity": affinity}


def _number(text):
    try:
        return int(text.strip())
    except (AttributeError, ValueError):
        return None


def cgroup_limits():
    """CPU quota (in cores) and memory limit (bytes) from cgroup v2, else v1; null = none."""
    quota = memory = None
    version = None
    cpu_max = _read("/sys/fs/cgroup/cpu.max")  # v2: "max 100000" or "200000 100000"
    if cpu_max is not None:
        version = 2
        parts = cpu_max.split()
        if len(parts) == 2 and parts[0] != "max":
            quota = int(parts[0]) / float(parts[1])
        memory = _number(_read("/sys/fs/cgroup/memory.max"))
    else:
        v1_quota = _number(_read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))
        v1_period = _number(_read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
        if v1_quota is not None:
            version = 1
        if v1_quota and v1_quota > 0 and v1_period:
            quota = v1_quota / float(v1_period)
        memory = _number(_read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        if memory is not None and memory >= 1 << 60:  # v1 writes "unlimited" as ~2**63
            memory = None
    return {"version": version, "cpu_quota_cores": quota, "memory_limit_bytes": memory}


def distributions():
    """{name: version} of every installed distribution (importlib.metadata or pkg_resources)."""
    try:
        from importlib import metadata  # novm (Python 3.8+; pkg_resources below otherwise)
        found = {}
        for dist in metadata.distributions():
            name = dist.metadata["Name"]
            if name:
                found[name.lower()] = dist.version
        return found
    except ImportError:
        pass
    try:
        import pkg_resources  # Python 3.6/3.7 (setuptools)
        return dict((d.project_name.lower(), d.version) for d in pkg_resources.working_set)
    except ImportError:
        return {}


def packages():
    installed = distributions()
    wanted = {}
    for name, version in sorted(installed.items()):
        if name in PACKAGES or name.startswith(PACKAGE_PREFIXES):
            wanted[name] = version
    if "numpy" not in wanted:  # no metadata at all: at least the modules we imported
        import numpy
        wanted["numpy"] = numpy.__version__
    return wanted


def nvidia_smi():
    tool = shutil.which("nvidia-smi")
    if not tool:
        return None
    query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
    try:
        text = subprocess.check_output([tool] + query, stderr=subprocess.DEVNULL,
                                       universal_newlines=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in text.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3:
            memory = _number(parts[2])
            gpus.append({"name": parts[0], "driver": parts[1],
                         "memory_bytes": memory * 1024 * 1024 if memory is not None else None,
                         "source": "nvidia-smi"})
    return gpus or None


def torch_gpus():
    """GPUs as torch sees them, only when torch is already imported (the torch backend):
    importing torch just for this would cost seconds and memory in onnxruntime runs."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        gpus = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "driver": None,
                         "memory_bytes": int(props.total_memory), "source": "torch",
                         "cuda": torch.version.cuda,
                         "capability": "{}.{}".format(props.major, props.minor)})
        return gpus
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not fail the fingerprint
        return None


def collect(providers_available):
    return {
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "os": os_release(),
        "glibc": glibc_version(),
        "cpu": cpu_info(),
        "cgroup": cgroup_limits(),
        "packages": packages(),
        "providers_available": list(providers_available),
        "gpu": nvidia_smi() or torch_gpus(),
        "env": dict((name, os.environ.get(name)) for name in ENV_VARS),
        "image": {"base": os.environ.get("ENVMATRIX_BASE_IMAGE"),
                  "id": os.environ.get("ENVMATRIX_IMAGE_ID"),
                  "environment": os.environ.get("ENVMATRIX_ENVIRONMENT")},
        "machine": platform.machine(),
    }


def runtime_package(installed):
    """The onnxruntime distribution under test: onnxruntime-gpu / -openvino / plain."""
    for name in ("onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime-directml",
                 "onnxruntime-training", "onnxruntime"):
        if name in installed:
            return name, installed[name]
    return None, None

