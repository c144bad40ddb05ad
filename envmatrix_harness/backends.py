"""The two runtimes the harness times: onnxruntime (every flavour) and TorchScript (torch).

Both offer the same small surface to `harness.child`:
  available, requested, options, notes, import_s, create(), input_specs(), output_specs(),
  active(), runner(feeds) -> (call, args, sync), name_outputs(raw) -> [(name, value)],
  threads() -> the thread counts asked for and, where the runtime says, in effect,
  gpu_index() -> the CUDA device index of a GPU cell (None otherwise),
  gpu_memory_peak() -> the runtime's own peak of device memory (torch) or None,
  placement(feeds) -> the node placement fields (harness.placement; after the measurement),
  worker_init -> None, or a function each thread of a --concurrency loop calls first.
The runtime modules are imported here and nowhere else, and only when asked for.
"""

import collections
import os
import re
import threading
import time

from . import compat, fingerprint, optiontable, placement
from .errors import HarnessError, ModelError, ProviderError, UsageError

GRAPH_OPT_LEVELS = optiontable.SESSION_ENUMS["graph_optimization"][1]


def one_line(text, limit=400):
    """A runtime's (often multi-line, ANSI-coloured) message squeezed onto one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class OrtBackend:
    name = "onnxruntime"
    # session.run is thread-safe and keeps no per-thread state: nothing to set up per thread
    worker_init = None

    def __init__(self, settings, model):
        t0 = time.perf_counter()
        try:
            import onnxruntime
        except ImportError as err:
            raise ProviderError(f"onnxruntime cannot be imported here ({one_line(err)}); install "
                                "onnxruntime, onnxruntime-gpu or onnxruntime-openvino") from err
        self.import_s = time.perf_counter() - t0  # numpy is already imported (harness.inputs)
        self.ort = onnxruntime
        self.settings = settings
        self.model = model
        package, package_version = fingerprint.runtime_package()
        self.package = package or "onnxruntime"
        self.version = onnxruntime.__version__
        # The distribution's own version decides option spellings (onnxruntime-openvino 1.15.0
        # reports __version__ 1.16.0).
        self.package_version = compat.parse_version(package_version or self.version)
        self.available = list(onnxruntime.get_available_providers())
        self.requested = compat.provider_full_name(settings["provider"] or "cpu", self.available)
        if self.requested not in self.available:
            raise ProviderError(
                "provider {} is not available in {} {}; available: {}".format(
                    self.requested, self.package, self.version, ", ".join(self.available)))
        self.options, self.notes = compat.translate_options(
            self.requested, settings["provider_options"], self.package_version, self.package)
        self.session_settings = requested_session(settings)
        self._refuse_unknown_settings(package_version or self.version)
        self.runtime_options = compat.runtime_option_values(self.requested, self.options,
                                                            self.package_version)
        self.session = None

    def _refuse_unknown_settings(self, version):
        """A setting the installed release does not know is a usage error naming the release
        that introduced it (the host checked the pins; this checks what is installed)."""
        found = optiontable.session_problems(self.session_settings, self.package, version)
        if self.requested == compat.OPENVINO and "openvino" in self.package:
            found += [problem[:2] for problem in
                      optiontable.openvino_problems(self.options, version, self.package)]
        if found:
            raise UsageError("; ".join(f"{name} {why}" for name, why in found))

    def _session_options(self):
        options = self.ort.SessionOptions()
        if self.settings["threads"]:
            options.intra_op_num_threads = int(self.settings["threads"])
        try:
            compat.apply_session(self.ort, options, self.session_settings)
        except AttributeError as err:
            raise UsageError(f"{self.package} {self.version}: {err}") from err
        return options

    def create(self):
        try:
            self.session = compat.create_session(self.ort, self.model["path"],
                                                 self._session_options(), self.requested,
                                                 self.runtime_options)
        except Exception as err:  # noqa: BLE001 - the runtime's exception types vary by release
            runtime = f"{self.package} {self.version}"
            reason = compat.explain_load_error(err, self.model, runtime,
                                               compat.parse_version(self.version))
            if reason:
                raise ModelError(reason) from err
            raise HarnessError("{} could not create a session for {}: {}".format(
                runtime, self.model["path"], one_line(err))) from err

    def input_specs(self):
        return [(arg.name, arg.type, arg.shape) for arg in self.session.get_inputs()]

    def output_specs(self):
        return [(arg.name, arg.type, arg.shape) for arg in self.session.get_outputs()]

    def active(self):
        return list(self.session.get_providers())

    def runner(self, feeds):
        # A plain dict of ready numpy arrays and output_names=None: nothing is built per call.
        return self.session.run, (None, dict(feeds)), None

    def name_outputs(self, raw):
        names = [arg.name for arg in self.session.get_outputs()]
        return list(zip(names, raw))

    def adapt_fixed(self, fixed):
        return fixed

    def gpu_index(self):
        """CUDA / TensorRT: the device_id option (default 0); None for every other provider.

        session.run copies the outputs back to host memory before it returns (numpy arrays),
        so the timed call covers the device work and that copy without an explicit sync.
        """
        if self.requested not in compat.NVIDIA_PROVIDERS:
            return None
        try:
            return int(self.options.get("device_id", 0))
        except (TypeError, ValueError):
            return 0

    def gpu_memory_peak(self):
        return None

    def placement(self, feeds):
        """Node counts per provider from one profiled inference in a second session (same
        providers and options); never raises: a failure is recorded as the reason."""
        path = os.path.abspath(self.model["path"])

        def make_session(sess_options):
            return compat.create_session(self.ort, path, sess_options, self.requested,
                                         self.runtime_options)
        try:
            events = placement.profile_once(make_session, self._session_options(), feeds)
            return placement.summarize_trace(events, self.requested)
        except Exception as err:  # noqa: BLE001 - placement must never fail the measurement
            return placement.unavailable(one_line(err, 300))

    def threads(self):
        """What was asked (null: the runtime's default) and what the session's options say.

        onnxruntime keeps 0 in its options when it picks the count itself, so the effective
        count is known only when one was asked (threads.alive_in_loop shows what ran); its
        inter-op pool only runs with ORT_PARALLEL, which the harness never sets.
        """
        intra = inter = None
        try:
            options = self.session.get_session_options()
            intra = int(options.intra_op_num_threads) or None
            inter = int(options.inter_op_num_threads) or None
        except Exception:  # noqa: BLE001 - a build without get_session_options: unknown
            pass
        asked = self.session_settings
        return {"intra_op_requested": asked.get("intra_op_threads") or self.settings["threads"],
                "inter_op_requested": asked.get("inter_op_threads"),
                "intra_op_effective": intra, "inter_op_effective": inter}

    def in_force(self):
        """(session settings, provider options) as the created session reads them back."""
        try:
            session = compat.session_in_force(self.session.get_session_options(),
                                              self.session_settings)
        except Exception:  # noqa: BLE001 - a build without get_session_options: unknown
            session = None
        return session, compat.provider_options_in_force(self.session, self.requested)


class TorchBackend:
    """A TorchScript module (torch.jit.load) on cpu or cuda, under inference_mode/no_grad."""

    name = "torch"

    def __init__(self, settings, model):
        t0 = time.perf_counter()
        try:
            import torch
        except ImportError as err:
            raise ProviderError(f"torch cannot be imported here ({one_line(err)}); install torch "
                                "for --backend torch") from err
        self.import_s = time.perf_counter() - t0
        self.torch = torch
        self.settings = settings
        self.model = model
        self.version = torch.__version__
        self.available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self.requested = torch_device(settings["provider"])
        if self.requested.split(":")[0] not in self.available:
            raise ProviderError("torch device {} is not available in torch {}; available: {}"
                                .format(self.requested, self.version, ", ".join(self.available)))
        self.options, self.notes = dict(settings["provider_options"]), []
        if self.options:
            self.notes.append("provider options are ignored by the torch backend")
        if requested_session(settings):
            raise UsageError("session settings ({}) are onnxruntime's; the torch backend has "
                             "none".format(", ".join(sorted(requested_session(settings)))))
        if settings["threads"]:
            torch.set_num_threads(int(settings["threads"]))
        self.module = None
        self._grad_context = None
        self._per_thread = threading.local()

    def create(self):
        torch = self.torch
        try:
            self.module = torch.jit.load(self.model["path"], map_location=self.requested)
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/ValueError/...
            raise ModelError("torch {} cannot load {} as TorchScript: {}".format(
                self.version, self.model["path"], one_line(err))) from err
        self.module.eval()
        # inference_mode (torch >= 1.9) is cheaper than no_grad; both are thread-local and
        # stay entered for the life of this process, which is one measurement.
        self._grad_context = self._grad_mode()
        self._grad_context.__enter__()

    def _grad_mode(self):
        return (getattr(self.torch, "inference_mode", None) or self.torch.no_grad)()

    def worker_init(self):
        """Enter inference_mode/no_grad in a --concurrency thread: both are thread-local, so
        the main thread's does not reach it. The context is kept in a thread-local slot, so it
        lives as long as the thread and is dropped in that thread (dropping inference_mode's
        guard restores the mode of the thread that drops it)."""
        self._per_thread.grad_context = self._grad_mode()
        self._per_thread.grad_context.__enter__()

    def input_specs(self):
        """Names from forward()'s schema; TorchScript keeps no dtypes or shapes, so those come
        from --dtype/--shape or the --inputs file (float32 by default)."""
        try:
            arguments = self.module.forward.schema.arguments
            names = [arg.name for arg in arguments if arg.name != "self"]
        except AttributeError:
            names = ["input"]
        dtypes = self.settings.get("dtypes") or {}
        return [(name, dtypes.get(name), None) for name in names]

    def output_specs(self):
        return None

    def adapt_fixed(self, fixed):
        """Tensors of an --inputs file made for the ONNX twin of this model carry the ONNX
        input names (input_ids), which TorchScript's forward() may spell differently (ids).
        When no name matches but the counts do, feed them in file order and say so."""
        names = [spec[0] for spec in self.input_specs()]
        if not fixed or set(fixed) & set(names) or len(fixed) != len(names):
            return fixed
        pairs = list(zip(fixed, names))
        self.notes.append("inputs file tensors fed to forward() by position: " + ", ".join(
            f"{file_name} -> {arg}" for file_name, arg in pairs))
        return collections.OrderedDict((arg, fixed[file_name]) for file_name, arg in pairs)

    def active(self):
        return [self.requested]

    def gpu_index(self):
        if not self.requested.startswith("cuda"):
            return None
        _, _, index = self.requested.partition(":")
        return int(index) if index.isdigit() else 0

    def gpu_memory_peak(self):
        """torch.cuda.max_memory_allocated of the device (the process's peak, tensors only:
        the caching allocator's reserve and the CUDA context are not in it)."""
        if self.gpu_index() is None:
            return None
        try:
            return int(self.torch.cuda.max_memory_allocated(self.requested))
        except Exception:  # noqa: BLE001 - best effort
            return None

    def placement(self, feeds):
        return placement.not_applicable()

    def in_force(self):
        return None, None

    def threads(self):
        """What was asked (null: torch's default) and torch's own counts after the run."""
        torch = self.torch
        intra = inter = None
        try:
            intra = int(torch.get_num_threads())
            inter = int(torch.get_num_interop_threads())
        except Exception:  # noqa: BLE001 - very old torch without get_num_interop_threads
            pass
        return {"intra_op_requested": self.settings["threads"], "inter_op_requested": None,
                "intra_op_effective": intra, "inter_op_effective": inter}

    def runner(self, feeds):
        torch = self.torch
        tensors = tuple(torch.from_numpy(array).to(self.requested) for array in feeds.values())
        sync = torch.cuda.synchronize if self.requested.startswith("cuda") else None
        return self.module, tensors, sync

    def name_outputs(self, raw):
        return [(name, tensor.detach().cpu().numpy()) for name, tensor in _flatten("output", raw)]


def torch_device(provider):
    """'cpu', 'cuda', 'cuda:1'; onnxruntime-style names (CPUExecutionProvider, CUDA) map to
    the matching torch device, so one provider column can drive both backends."""
    text = str(provider or "cpu").strip().lower()
    if text.endswith("executionprovider"):
        text = text[:-len("executionprovider")]
    return text


def _flatten(prefix, value):
    """Tensors of a (nested) tuple/list/dict output, named output, output.0, output.key ..."""
    if isinstance(value, (tuple, list)):
        items = [(f"{prefix}.{i}", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f"{prefix}.{k}", v) for k, v in value.items()]
    else:
        return [(prefix, value)]
    flat = []
    for name, item in items:
        flat.extend(_flatten(name, item))
    return flat


def requested_session(settings):
    """The session settings asked for: --session-options, plus --graph-optimization."""
    session = dict(settings.get("session") or {})
    if settings.get("graph_optimization") and "graph_optimization" not in session:
        session["graph_optimization"] = settings["graph_optimization"]
    return session


def make_backend(settings, model):
    if settings["backend"] == "torch":
        return TorchBackend(settings, model)
    return OrtBackend(settings, model)
