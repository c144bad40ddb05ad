"""NVIDIA's management library (NVML) through ctypes: GPU identity, memory, clocks and energy.

The harness keeps its three dependencies (stdlib, numpy, the runtime), so NVML is called
directly in the driver's `libnvidia-ml.so.1` (present wherever the NVIDIA driver is, and mounted
into containers by the NVIDIA container toolkit). ENVMATRIX_NVML_LIBRARY names another file
(the tests load a fake built from C). Nothing here raises into a measurement: every NVML call's
return code is mapped to a readable reason (`reason_for`), and a reading that fails is null with
the reason next to it.

Used only for GPU cells (onnxruntime's CUDA/TensorRT providers, torch on cuda): `GpuMonitor`
reads the energy counter right before and right after the timed loop (energy per inference), or,
where the GPU has no energy counter (NVML_ERROR_NOT_SUPPORTED), samples the power draw at about
10 Hz in a background thread; it samples the device's used memory the same way (peak GPU
memory). The timed loop itself is not touched.
"""

import contextlib
import ctypes
import os
import threading
import time

ENV_LIBRARY = "ENVMATRIX_NVML_LIBRARY"
DEFAULT_LIBRARY = "libnvidia-ml.so.1"
SAMPLE_INTERVAL_S = 0.1

SUCCESS = 0
ERROR_NOT_SUPPORTED = 3
ERROR_INSUFFICIENT_SIZE = 7
CLOCK_GRAPHICS, CLOCK_SM, CLOCK_MEM = 0, 1, 2

# nvmlReturn_t (nvml.h) -> (name, what it means here)
ERRORS = {
    1: ("NVML_ERROR_UNINITIALIZED", "NVML was not initialised"),
    2: ("NVML_ERROR_INVALID_ARGUMENT", "invalid argument (e.g. no GPU with that index)"),
    3: ("NVML_ERROR_NOT_SUPPORTED", "not supported by this GPU or driver"),
    4: ("NVML_ERROR_NO_PERMISSION", "no permission (the container or user may not read it)"),
    5: ("NVML_ERROR_ALREADY_INITIALIZED", "already initialised"),
    6: ("NVML_ERROR_NOT_FOUND", "not found"),
    7: ("NVML_ERROR_INSUFFICIENT_SIZE", "buffer too small"),
    8: ("NVML_ERROR_INSUFFICIENT_POWER", "the GPU's external power cables are not attached"),
    9: ("NVML_ERROR_DRIVER_NOT_LOADED", "the NVIDIA driver is not loaded"),
    10: ("NVML_ERROR_TIMEOUT", "timed out"),
    11: ("NVML_ERROR_IRQ_ISSUE", "interrupt request issue"),
    12: ("NVML_ERROR_LIBRARY_NOT_FOUND", "a library NVML needs was not found"),
    13: ("NVML_ERROR_FUNCTION_NOT_FOUND", "the driver lacks this function"),
    14: ("NVML_ERROR_CORRUPTED_INFOROM", "the GPU's infoROM is corrupted"),
    15: ("NVML_ERROR_GPU_IS_LOST", "the GPU fell off the bus or is otherwise inaccessible"),
    16: ("NVML_ERROR_RESET_REQUIRED", "the GPU needs a reset"),
    17: ("NVML_ERROR_OPERATING_SYSTEM", "the operating system blocked the call"),
    18: ("NVML_ERROR_LIB_RM_VERSION_MISMATCH", "the NVML library and the kernel driver differ "
                                               "in version (driver updated, not reloaded?)"),
    19: ("NVML_ERROR_IN_USE", "in use"),
    20: ("NVML_ERROR_MEMORY", "out of memory"),
    21: ("NVML_ERROR_NO_DATA", "no data"),
    22: ("NVML_ERROR_VGPU_ECC_NOT_SUPPORTED", "ECC not supported on vGPU"),
    23: ("NVML_ERROR_INSUFFICIENT_RESOURCES", "insufficient resources"),
    24: ("NVML_ERROR_FREQ_NOT_SUPPORTED", "frequency not supported"),
    25: ("NVML_ERROR_ARGUMENT_VERSION_MISMATCH", "structure version mismatch"),
    26: ("NVML_ERROR_DEPRECATED", "deprecated"),
    27: ("NVML_ERROR_NOT_READY", "not ready"),
    28: ("NVML_ERROR_GPU_NOT_FOUND", "GPU not found"),
    29: ("NVML_ERROR_INVALID_STATE", "invalid state"),
    999: ("NVML_ERROR_UNKNOWN", "unknown error"),
}


def reason_for(code):
    """'NVML_ERROR_NOT_SUPPORTED (3): not supported by this GPU or driver'."""
    name, text = ERRORS.get(code, ("NVML return code", "not documented in nvml.h"))
    return f"{name} ({code}): {text}"


class NvmlError(Exception):
    def __init__(self, function, code=None, reason=None):
        self.function = function
        self.code = code
        self.reason = reason or reason_for(code)
        Exception.__init__(self, f"{function}: {self.reason}")


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]


class Nvml:
    """One loaded NVML library. open() before use; every getter raises NvmlError."""

    def __init__(self, path=None):
        self.path = path or os.environ.get(ENV_LIBRARY) or DEFAULT_LIBRARY
        self.lib = None

    def open(self):
        """None when NVML is ready, else the reason it is not (never raises)."""
        try:
            self.lib = ctypes.CDLL(self.path)
        except OSError as err:
            return "cannot load {} ({}): no NVIDIA driver here, or it is not mounted into " \
                   "the container".format(self.path, " ".join(str(err).split()))
        try:
            try:
                self._call("nvmlInit_v2")
            except NvmlError as err:
                if err.code is not None:
                    raise
                self._call("nvmlInit")  # drivers before nvmlInit_v2 (R3xx)
        except NvmlError as err:
            self.lib = None
            return str(err)
        return None

    def close(self):
        if self.lib is not None:
            with contextlib.suppress(NvmlError):
                self._call("nvmlShutdown")
            self.lib = None

    def _call(self, function, *args):
        try:
            func = getattr(self.lib, function)
        except AttributeError:
            raise NvmlError(function, None, f"not in {self.path} (driver too old)") from None
        func.restype = ctypes.c_int
        code = func(*args)
        if code != SUCCESS:
            raise NvmlError(function, code)

    def _call_first(self, functions, *args):
        """The first of several spellings (`_v2` and the original) the library has."""
        missing = None
        for function in functions:
            try:
                return self._call(function, *args)
            except NvmlError as err:
                if err.code is not None:
                    raise
                missing = err
        raise missing

    def _text(self, function, *args):
        buffer = ctypes.create_string_buffer(96)
        self._call(function, *(args + (buffer, ctypes.c_uint(len(buffer)))))
        return buffer.value.decode("utf-8", "replace")

    def driver_version(self):
        return self._text("nvmlSystemGetDriverVersion")

    def cuda_driver_version(self):
        """The newest CUDA the driver supports: '12.4' from 12040."""
        value = ctypes.c_int()
        self._call_first(("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"),
                         ctypes.byref(value))
        return f"{value.value // 1000}.{(value.value % 1000) // 10}"

    def device_count(self):
        value = ctypes.c_uint()
        self._call_first(("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"), ctypes.byref(value))
        return value.value

    def handle(self, index):
        handle = ctypes.c_void_p()
        self._call_first(("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex"),
                         ctypes.c_uint(index), ctypes.byref(handle))
        return handle

    def name(self, handle):
        return self._text("nvmlDeviceGetName", handle)

    def uuid(self, handle):
        return self._text("nvmlDeviceGetUUID", handle)

    def memory(self, handle):
        """(total, free, used) bytes of the whole device (every process on it)."""
        info = _Memory()
        self._call("nvmlDeviceGetMemoryInfo", handle, ctypes.byref(info))
        return info.total, info.free, info.used

    def energy_mj(self, handle):
        """Energy used since the driver was loaded, millijoules (Volta and newer)."""
        value = ctypes.c_ulonglong()
        self._call("nvmlDeviceGetTotalEnergyConsumption", handle, ctypes.byref(value))
        return value.value

    def power_mw(self, handle):
        value = ctypes.c_uint()
        self._call("nvmlDeviceGetPowerUsage", handle, ctypes.byref(value))
        return value.value

    def clock_mhz(self, handle, clock):
        value = ctypes.c_uint()
        self._call("nvmlDeviceGetClockInfo", handle, ctypes.c_uint(clock), ctypes.byref(value))
        return value.value


def attempt(errors, key, function, *args):
    """function(*args), or None with errors[key] = the reason (NvmlError or anything else)."""
    try:
        return function(*args)
    except NvmlError as err:
        errors[key] = err.reason
    except Exception as err:  # noqa: BLE001 - a broken library must not end the measurement
        errors[key] = f"{type(err).__name__}: {err}"
    return None


def nvml_index(nvml, cuda_index, environ=None):
    """The NVML index of CUDA device `cuda_index` (NVML ignores CUDA_VISIBLE_DEVICES).

    CUDA_VISIBLE_DEVICES of integers or GPU UUIDs is followed; anything else (unset, MIG
    identifiers) leaves the index as it is. CUDA numbers the visible devices fastest first
    unless CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML in PCI order: with several different GPUs and no
    CUDA_VISIBLE_DEVICES the two can differ (docs/result-schema.md says so).
    """
    environ = os.environ if environ is None else environ
    visible = [item.strip() for item in environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if item.strip()]
    if not visible or cuda_index >= len(visible):
        return cuda_index
    chosen = visible[cuda_index]
    if chosen.isdigit():
        return int(chosen)
    if chosen.startswith("GPU-"):
        try:
            for index in range(nvml.device_count()):
                if nvml.uuid(nvml.handle(index)).startswith(chosen):
                    return index
        except NvmlError:
            pass
    return cuda_index


def gpus(path=None):
    """[{name, driver, memory_bytes, cuda_driver, index, source: "nvml"}] of every GPU NVML
    sees, or None (no NVML); for the fingerprint of GPU cells."""
    nvml = Nvml(path)
    if nvml.open() is not None:
        return None
    try:
        errors = {}
        driver = attempt(errors, "driver", nvml.driver_version)
        cuda = attempt(errors, "cuda_driver", nvml.cuda_driver_version)
        count = attempt(errors, "count", nvml.device_count) or 0
        found = []
        for index in range(count):
            handle = attempt(errors, "handle", nvml.handle, index)
            if handle is None:
                continue
            memory = attempt(errors, "memory", nvml.memory, handle)
            found.append({"name": attempt(errors, "name", nvml.name, handle), "driver": driver,
                          "memory_bytes": int(memory[0]) if memory else None,
                          "cuda_driver": cuda, "index": index, "source": "nvml"})
        return found or None
    finally:
        nvml.close()


class GpuMonitor:
    """Energy, power and memory of one GPU around the timed loop; start() and stop() are the
    only calls, both outside the loop; neither raises."""

    def __init__(self, cuda_index, path=None, interval_s=SAMPLE_INTERVAL_S):
        self.cuda_index = cuda_index
        self.interval_s = interval_s
        self.nvml = Nvml(path)
        self.errors = {}
        self.handle = None
        self.index = None
        self.status = None
        self.energy0 = None
        self.sample_power = False
        self.power_mw = []
        self.memory_used = []
        self._stop = threading.Event()
        self._thread = None
        self._t0 = None
        self.clocks_start = None

    def start(self):
        reason = self.nvml.open()
        if reason is None:
            self.index = attempt(self.errors, "index", nvml_index, self.nvml, self.cuda_index)
            self.handle = attempt(self.errors, "handle", self.nvml.handle,
                                  self.cuda_index if self.index is None else self.index)
            if self.handle is None:
                reason = "no handle for GPU {}: {}".format(self.cuda_index,
                                                           self.errors.get("handle"))
        if reason is not None:
            self.status = "unavailable: " + reason
            self.nvml.close()
            return self
        self.status = "ok"
        self.clocks_start = self._clocks("start")
        self._sample_memory()
        self.energy0 = attempt(self.errors, "energy", self.nvml.energy_mj, self.handle)
        if self.energy0 is None:
            first = attempt(self.errors, "power", self.nvml.power_mw, self.handle)
            if first is not None:
                self.sample_power = True
                self.power_mw.append(first)
        self._t0 = time.perf_counter()
        if self.sample_power or self.memory_used:
            self._thread = threading.Thread(target=self._sampler, name="harness-nvml")
            self._thread.daemon = True
            self._thread.start()
        return self

    def _clocks(self, when):
        errors = {}
        clocks = {"sm": attempt(errors, "sm", self.nvml.clock_mhz, self.handle, CLOCK_SM),
                  "mem": attempt(errors, "mem", self.nvml.clock_mhz, self.handle, CLOCK_MEM)}
        for key, text in errors.items():
            self.errors[f"clock_{key}_{when}"] = text
        return clocks

    def _sample_memory(self):
        memory = attempt(self.errors, "memory", self.nvml.memory, self.handle)
        if memory is not None:
            self.memory_used.append(int(memory[2]))

    def _sampler(self):
        while not self._stop.wait(self.interval_s):
            if self.sample_power:
                value = attempt(self.errors, "power", self.nvml.power_mw, self.handle)
                if value is not None:
                    self.power_mw.append(value)
            if self.memory_used:
                self._sample_memory()

    def stop(self, iterations):
        """The repeat's `gpu` block (docs/result-schema.md)."""
        record = {"nvml": self.status, "nvml_index": self.index, "energy_method": None,
                  "energy_per_inference_j": None, "mean_power_w": None, "power_samples": None,
                  "energy_window_s": None, "memory_used_before_bytes": None,
                  "memory_used_peak_bytes": None, "memory_samples": None,
                  "clocks_mhz": None, "errors": None}
        if self.status != "ok":
            record["energy_method"] = "not supported: NVML " + self.status
            return record
        energy1 = None
        try:
            if self.energy0 is not None:
                energy1 = attempt(self.errors, "energy", self.nvml.energy_mj, self.handle)
            window = time.perf_counter() - self._t0
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5 * self.interval_s + 1.0)
            if self.sample_power:
                last = attempt(self.errors, "power", self.nvml.power_mw, self.handle)
                if last is not None:
                    self.power_mw.append(last)
            if self.memory_used:
                self._sample_memory()
            record.update(energy_window_s=window, clocks_mhz={
                "start": self.clocks_start, "end": self._clocks("end")})
            self._energy(record, energy1, window, iterations)
            if self.memory_used:
                record.update(memory_used_before_bytes=self.memory_used[0],
                              memory_used_peak_bytes=max(self.memory_used),
                              memory_samples=len(self.memory_used))
        finally:
            self.nvml.close()
        record["errors"] = dict(self.errors) or None
        return record

    def _energy(self, record, energy1, window, iterations):
        if self.energy0 is not None and energy1 is not None and energy1 >= self.energy0:
            joules = (energy1 - self.energy0) / 1000.0
            record.update(energy_method="energy_counter",
                          energy_per_inference_j=joules / iterations,
                          mean_power_w=joules / window if window > 0 else None)
        elif self.sample_power and self.power_mw:
            watts = sum(self.power_mw) / 1000.0 / len(self.power_mw)
            record.update(energy_method="power_sampling", mean_power_w=watts,
                          power_samples=len(self.power_mw),
                          energy_per_inference_j=watts * window / iterations)
        else:
            why = []
            if "energy" in self.errors:
                why.append("energy counter: " + self.errors["energy"])
            elif energy1 is not None:
                why.append("energy counter went backwards")
            if "power" in self.errors:
                why.append("power: " + self.errors["power"])
            record["energy_method"] = "not supported: " + ("; ".join(why) or "no reading")
