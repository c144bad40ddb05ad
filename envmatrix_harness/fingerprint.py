"""Where a measurement was taken: interpreter, OS, C library, CPU, limits, packages, devices.

Every probe is best-effort: a missing file or tool yields null, never an exception, because
the fingerprint must not be the reason a measurement fails.
"""

import os
import platform
import re
import shutil
import site
import subprocess
import sys

# The CPU flags that decide which kernels inference runtimes pick.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY",
            "CUDA_VISIBLE_DEVICES", "ORT_TENSORRT_FP16_ENABLE", "ENVMATRIX_BASE_IMAGE",
            "ENVMATRIX_IMAGE_ID", "ENVMATRIX_ENVIRONMENT")


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
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


def normalize_name(name):
    """PEP 503 normal form: `ONNXRuntime_GPU` and `onnxruntime-gpu` are one distribution."""
    return re.sub(r"[-_.]+", "-", str(name)).lower()


def _metadata_fields(path):
    """(Name, Version) from a METADATA / PKG-INFO file's headers; None for a missing field."""
    name = version = None
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break  # the headers end at the first blank line; the description follows
                key, sep, value = line.partition(":")
                if not sep:
                    continue
                key = key.strip().lower()
                if key == "name" and name is None:
                    name = value.strip()
                elif key == "version" and version is None:
                    version = value.strip()
    except OSError:
        pass
    return name, version


def _metadata_file(folder, entry):
    """The metadata file of one sys.path entry's item, or None if it is no distribution."""
    path = os.path.join(folder, entry)
    if entry.endswith(".dist-info"):
        return os.path.join(path, "METADATA")
    if entry.endswith(".egg-info"):  # a folder (pip, setup.py develop) or the file itself
        return os.path.join(path, "PKG-INFO") if os.path.isdir(path) else path
    if entry.endswith(".egg") and os.path.isdir(path):  # easy_install's unzipped eggs
        return os.path.join(path, "EGG-INFO", "PKG-INFO")
    return None


def _name_from_entry(entry):
    """('onnxruntime-openvino', '1.24.1') from 'onnxruntime_openvino-1.24.1.dist-info';
    (None, None) when the name carries no version (e.g. a development egg-info)."""
    stem = entry.rsplit(".", 1)[0]
    name, sep, rest = stem.partition("-")
    if not sep or not rest:
        return None, None
    return name, rest.split("-", 1)[0]  # eggs: name-version-py3.6


def scan_distributions(read_metadata=True, paths=None):
    """{normalised name: version} of the *.dist-info / *.egg-info / *.egg found in sys.path.

    The first of a name in sys.path order wins, as for imports. Works on every Python (the
    3.6/3.7 path of `distributions`); with read_metadata=False only folder names are read,
    which costs a few listdir calls (the runtime lookup before session creation uses that).
    """
    found = {}
    seen = set()
    for folder in (sys.path if paths is None else paths):
        folder = os.path.abspath(folder or os.curdir)
        if folder in seen or not os.path.isdir(folder):
            continue
        seen.add(folder)
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            metadata = _metadata_file(folder, entry)
            if metadata is None:
                continue
            name, version = _name_from_entry(entry)
            if read_metadata or name is None:
                meta_name, meta_version = _metadata_fields(metadata)
                name, version = meta_name or name, meta_version or version
            if name:
                found.setdefault(normalize_name(name), version)
    return found


def installed_paths():
    """The sys.path entries that belong to the interpreter's installation (its prefixes and
    site folders), in sys.path order.

    A source checkout on PYTHONPATH or the working directory is not installed, even when a
    `pip install -e .` left an `.egg-info` in it: it must not count as a distribution.
    """
    roots = [os.path.abspath(p) for p in (sys.prefix, sys.exec_prefix,
                                          getattr(sys, "base_prefix", sys.prefix))]
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        roots.append(os.path.abspath(user_site))
    kept = []
    for entry in sys.path:
        folder = os.path.abspath(entry or os.curdir)
        if any(folder == root or folder.startswith(root + os.sep) for root in roots):
            kept.append(folder)
    return kept


def distributions():
    """{normalised name: version} of every installed distribution.

    importlib.metadata (Python 3.8+), else a scan of the metadata folders; only in the
    interpreter's installation (`installed_paths`); the first of a name in sys.path order
    wins (the one `import` would load).
    """
    paths = installed_paths()
    try:
        from importlib import metadata  # novm (Python 3.8+; the scan below otherwise)
    except ImportError:
        return scan_distributions(paths=paths)
    found = {}
    try:
        for dist in metadata.distributions(path=paths):
            name = dist.metadata["Name"]
            if name:
                found.setdefault(normalize_name(name), dist.version)
    except Exception:  # noqa: BLE001 - a broken metadata file must not fail the fingerprint
        return scan_distributions(paths=paths)
    return found


def packages():
    """Every installed distribution with its version, sorted by name (fingerprint.packages).

    Every one, not a list of interesting names: any package a matrix pins (onnx, protobuf,
    ...) can be checked against what is really installed.
    """
    installed = distributions()
    if "numpy" not in installed:  # no metadata at all: at least the module we imported
        import numpy
        installed["numpy"] = numpy.__version__
    return dict(sorted(installed.items()))


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
                         "capability": f"{props.major}.{props.minor}"})
        return gpus
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not fail the fingerprint
        return None


def _cuda_version(value):
    """cudaRuntimeGetVersion's 11080 -> '11.8'."""
    return f"{value // 1000}.{(value % 1000) // 10}" if value else None


def _cudnn_version(value):
    """cudnnGetVersion's 8907 -> '8.9.7' (cuDNN < 9: M*1000+m*100+p), 90100 -> '9.1.0'."""
    if not value:
        return None
    if value >= 90000:
        return f"{value // 10000}.{(value % 10000) // 100}.{value % 100}"
    return f"{value // 1000}.{(value % 1000) // 100}.{value % 100}"


_CUDART = re.compile(r"/libcudart\.so(\.[\d.]+)?$")
_CUDNN = re.compile(r"/libcudnn\.so(\.[\d.]+)?$")


def loaded_libraries(maps_text=None):
    """{"cudart": path, "cudnn": path} of the CUDA runtime and cuDNN this process has loaded
    (from /proc/self/maps: the runtime loads them when it creates a CUDA session)."""
    if maps_text is None:
        maps_text = _read("/proc/self/maps") or ""
    found = {}
    for line in maps_text.splitlines():
        path = line.split(None, 5)[-1] if len(line.split(None, 5)) == 6 else ""
        for key, pattern in (("cudart", _CUDART), ("cudnn", _CUDNN)):
            if key not in found and pattern.search(path):
                found[key] = path
    return found


def _library_call(path, function, pointer_argument):
    import ctypes
    try:
        library = ctypes.CDLL(path)
        func = getattr(library, function)
    except (OSError, AttributeError):
        return None
    try:
        if pointer_argument:
            value = ctypes.c_int()
            func.restype = ctypes.c_int
            return value.value if func(ctypes.byref(value)) == 0 else None
        func.restype = ctypes.c_size_t
        return int(func())
    except Exception:  # noqa: BLE001 - a broken library must not fail the fingerprint
        return None


def cuda_libraries(libraries=None):
    """{"cuda_runtime", "cudnn", "source", "cudart_path", "cudnn_path"} as seen inside the
    image, best effort, null where unknown: torch's own figures when torch is imported, else
    cudaRuntimeGetVersion / cudnnGetVersion of the libraries the process has loaded."""
    torch = sys.modules.get("torch")
    if torch is not None and libraries is None:
        try:
            cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() \
                else None
            return {"cuda_runtime": torch.version.cuda, "cudnn": _cudnn_version(cudnn),
                    "source": "torch", "cudart_path": None, "cudnn_path": None}
        except Exception:  # noqa: BLE001 - a broken CUDA setup must not fail the fingerprint
            pass
    libraries = loaded_libraries() if libraries is None else libraries
    cudart, cudnn = libraries.get("cudart"), libraries.get("cudnn")
    return {"cuda_runtime": _cuda_version(cudart and _library_call(
                cudart, "cudaRuntimeGetVersion", True)),
            "cudnn": _cudnn_version(cudnn and _library_call(cudnn, "cudnnGetVersion", False)),
            "source": "loaded libraries" if (cudart or cudnn) else None,
            "cudart_path": cudart, "cudnn_path": cudnn}


def collect(providers_available, gpu_cell=False):
    """The fingerprint; GPU cells also ask NVML (GPU list, driver) and read the CUDA runtime
    and cuDNN versions (`cuda`)."""
    gpus = None
    if gpu_cell:
        from . import nvml
        gpus = nvml.gpus()
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
        "gpu": gpus or nvidia_smi() or torch_gpus(),
        "cuda": cuda_libraries() if gpu_cell else None,
        "env": dict((name, os.environ.get(name)) for name in ENV_VARS),
        "image": {"base": os.environ.get("ENVMATRIX_BASE_IMAGE"),
                  "id": os.environ.get("ENVMATRIX_IMAGE_ID"),
                  "environment": os.environ.get("ENVMATRIX_ENVIRONMENT")},
        "machine": platform.machine(),
    }


def runtime_package(installed=None):
    """The onnxruntime distribution under test: onnxruntime-gpu / -openvino / plain.

    Without `installed`, a scan of folder names only: it runs before the session is created,
    inside the measured cold start, so it must not read every distribution's metadata.
    """
    if installed is None:
        installed = scan_distributions(read_metadata=False)
    for name in ("onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime-directml",
                 "onnxruntime-training", "onnxruntime"):
        if name in installed:
            return name, installed[name]
    return None, None

