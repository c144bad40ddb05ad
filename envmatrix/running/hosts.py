"""Hosts: how to reach the Docker engines of a matrix's `hosts:`, and what each one is.

Which hosts an environment selects and the cells each measures are the plan's
(envmatrix.config.hosts); this module reaches them. Connecting: a `url:` goes to the SDK as it
is (tcp:// with the `tls:` client certificates, ssh:// through the `ssh` binary so the user's
ssh config, agent and keys apply); a `context:` is read from the docker CLI's own store
(`$DOCKER_CONFIG` or ~/.docker: contexts/meta for the address, contexts/tls for the
certificates) with the standard library only. Credentials are read where the user keeps them;
only names, addresses and labels are ever recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envmatrix.config.hosts import DEFAULT
from envmatrix.errors import HostUnreachableError
from envmatrix.rundir.plan import Cell, Host

if TYPE_CHECKING:  # the engine, and with it the Docker SDK, loads only when a host is reached
    from envmatrix.running.engine import Engine, EngineLike, Target

# -- the plan: which host measures which cells ----------------------------------------------------


def cells_by_host(cells: Sequence[Cell], hosts: Sequence[Host]) -> dict[str, list[Cell]]:
    """Each host's cells in plan order (hosts in `hosts:` order)."""
    return {h.name: [c for c in cells if c.host == h.name] for h in hosts}


# -- reaching an engine ---------------------------------------------------------------------------


def docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def context_target(name: str, config_dir: Path | None = None) -> Target:
    """The engine a docker context names, read from the CLI's context store.

    The store keeps each context under the sha256 of its name: meta/<hash>/meta.json holds the
    address (Endpoints.docker.Host, SkipTLSVerify) and tls/<hash>/docker/ the ca, cert and key.
    """
    from envmatrix.running.engine import Target

    if name == "default":
        return Target()
    folder = config_dir or docker_config_dir()
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta_path = folder / "contexts" / "meta" / digest / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        endpoint = meta["Endpoints"]["docker"]
        address = str(endpoint["Host"])
    except FileNotFoundError:
        raise HostUnreachableError(f"docker context {name!r} does not exist (no {meta_path}); "
                                   "`docker context ls` lists the contexts") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HostUnreachableError(f"docker context {name!r} is unreadable: {err}") from None
    tls_dir = folder / "contexts" / "tls" / digest / "docker"
    files = {part: tls_dir / f"{part}.pem" for part in ("ca", "cert", "key")}
    have = {part: str(path) for part, path in files.items() if path.is_file()}
    return Target(base_url=address, tls_ca=have.get("ca"), tls_cert=have.get("cert"),
                  tls_key=have.get("key"), tls_verify=not endpoint.get("SkipTLSVerify", False))


def target_of(host: Host) -> Target:
    from envmatrix.running.engine import Target

    if host.address == DEFAULT:
        return Target()
    if host.address.startswith("context:"):
        return context_target(host.address.split(":", 1)[1])
    return Target(base_url=host.address, tls_ca=host.tls_ca, tls_cert=host.tls_cert,
                  tls_key=host.tls_key, tls_verify=host.tls_verify)


def connect(host: Host) -> Engine:
    """The host's engine; HostUnreachableError with the engine's or ssh's words if not."""
    if host.tls_cert and not Path(host.tls_cert).is_file():
        raise HostUnreachableError(f"host {host.name}: TLS client certificate "
                                   f"{host.tls_cert} is not a file")
    from envmatrix.running.engine import Engine

    return Engine.connect_to(target_of(host), host.name)


def shares_paths(host: Host) -> bool:
    """Whether the host's engine sees this machine's paths, so cells may bind-mount the run
    directory; else their inputs and results travel through volumes of that engine.

    The matrix's `shared_paths:` decides when given. Otherwise the address does: the default
    engine (also with DOCKER_HOST set, as a matrix without hosts: has always treated it) and
    unix:// sockets share this machine's paths; tcp:// and ssh:// engines (and contexts
    pointing at them) are taken as another machine's, even on a loopback address: copying
    works everywhere, a bind mount of a path the engine's machine lacks does not.
    """
    if host.shared_paths is not None:
        return host.shared_paths
    address = host.address
    if address.startswith("context:"):
        address = context_target(address.split(":", 1)[1]).base_url or DEFAULT
    return address == DEFAULT or address.startswith(("unix://", "npipe://"))


# -- what a host is -------------------------------------------------------------------------------


def fingerprint(engine: EngineLike) -> dict[str, Any]:
    """The machine behind an engine, as `docker info` and `docker version` tell it.

    The CPU model comes from the cells' own fingerprints (the harness reads /proc/cpuinfo
    inside the container); the engine knows cores, memory, kernel, OS and its runtimes.
    """
    described = engine.describe()
    info, version = described["info"], described["version"]
    return {
        "engine_version": version.get("Version") or info.get("ServerVersion"),
        "api_version": version.get("ApiVersion"),
        "os": info.get("OperatingSystem"),
        "kernel": info.get("KernelVersion"),
        "arch": info.get("Architecture"),
        "cpus": info.get("NCPU"),
        "memory_bytes": info.get("MemTotal"),
        "machine_name": info.get("Name"),
        "runtimes": sorted((info.get("Runtimes") or {}).keys()),
        "default_runtime": info.get("DefaultRuntime"),
        "gpu_runtime": any("nvidia" in r for r in (info.get("Runtimes") or {})),
    }
