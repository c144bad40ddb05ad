"""Our own exceptions: each carries its exit code and a message that says what to do.

The stages raise them; `cli` maps every one to its code in one place (`cli.exit_code`).
"""

from __future__ import annotations


class EnvmatrixError(Exception):
    """Base class; `str(err)` is the whole user-facing message."""

    exit_code = 1
    stage = "error"  # the progress label `cli` shows the message under


class ConfigError(EnvmatrixError):
    """matrix.yaml is wrong: the message names the file, the key path or line, and the fix."""

    exit_code = 2


class EngineError(EnvmatrixError):
    """The Docker engine is unreachable, refuses us, or ran out of something."""

    exit_code = 3


class GpuUnavailableError(EngineError):
    """The engine could not give a container the GPUs it asked for; the message is the
    engine's own. A cell's outcome (status `no_gpu`), not the run's end."""


class HostUnreachableError(EngineError):
    """A host of the matrix does not answer (down, refuses TLS, ssh fails); its cells get the
    status host_unreachable with these words, and the other hosts go on."""


class BaseImageError(EnvmatrixError):
    """A base image could not be found, pulled or bootstrapped."""

    exit_code = 4


class BuildError(EnvmatrixError):
    """An image build failed; `log_tail` holds the end of the build log."""

    exit_code = 5

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class BuildStepError(BuildError):
    """A build step failed; `cause` is the failing tool's own line (`toolwords.build_cause`).

    What reads `cause` (a cell's reason) needs it without the tag and log path that `str()`
    carries. Raised by the engine's builds and by the host's pip fetching `host_wheels`.
    """

    def __init__(self, message: str, log_tail: str, cause: str) -> None:
        super().__init__(message, log_tail)
        self.cause = cause


class RunDirError(EnvmatrixError):
    """A run directory is missing, incomplete, or holds results of another configuration."""

    exit_code = 6


class DifferentHardwareError(EnvmatrixError):
    """Two runs were measured on different CPUs; their timings do not compare."""

    exit_code = 7


class CellsFailed(EnvmatrixError):
    """The run finished but some cells did not produce numbers (each is listed before)."""

    exit_code = 10
    stage = "failed"


class GateFailed(EnvmatrixError):
    """A report holds a verdict that --fail-on (or matrix.yaml verdict.fail_on) names (each
    finding is listed before); wins over CellsFailed: the gate is what CI asked about."""

    exit_code = 11
    stage = "gate"


class Interrupted(EnvmatrixError):
    """Ctrl-C or SIGTERM while a run's stages ran: finished results are kept; `hint` is the
    command that finishes the run, where one can (None: it cannot be resumed)."""

    exit_code = 130
    stage = "stop"

    def __init__(self, hint: str | None) -> None:
        super().__init__("interrupted: finished cells are kept")
        self.hint = hint
