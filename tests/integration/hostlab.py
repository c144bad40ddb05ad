"""Engines for the hosts tests, on this machine only: a second dockerd reachable only over TLS
on a loopback TCP port, and an sshd on the loopback address through which ssh:// reaches the
machine's own engine. Everything is made by the test (certificates, keys, bridge) and stopped
by it; the machine's own engine and its docker0 bridge are never touched.

The second engine gets its own bridge and subnet: started with `--bridge=none` it would delete
docker0. It runs with `--iptables=false`, so it cannot
touch the first engine's chains; builds reach the package index through a MASQUERADE rule for
its own subnet, tagged with a comment and removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BRIDGE = f"emxh{os.getpid() % 100000}"  # at most 15 characters: an interface name
SUBNET = "10.213.77.0/24"
GATEWAY = "10.213.77.1/24"
RULE_TAG = f"envmatrix-hosts-test-{os.getpid()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=120)


def docker0_exists() -> bool:
    return run("ip", "link", "show", "docker0", check=False).returncode == 0


# -- certificates ---------------------------------------------------------------------------------


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    p = {name: folder / name for name in ("ca-key.pem", "ca.pem", "server-key.pem",
                                          "server.pem", "key.pem", "cert.pem")}
    ssl = shutil.which("openssl") or "openssl"
    run(ssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=envmatrix-test-ca", "-keyout", str(p["ca-key.pem"]), "-out", str(p["ca.pem"]))
    _signed(ssl, folder, "server", p["server-key.pem"], p["server.pem"],
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(ssl, folder, "client", p["key.pem"], p["cert.pem"], "extendedKeyUsage=clientAuth\n")
    for path in p.values():
        path.chmod(0o600)
    return p


def _signed(ssl: str, folder: Path, name: str, key: Path, cert: Path, ext: str) -> None:
    csr, extfile = folder / f"{name}.csr", folder / f"{name}.ext"
    extfile.write_text(ext)
    run(ssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=envmatrix-test-{name}",
        "-keyout", str(key), "-out", str(csr))
    run(ssl, "x509", "-req", "-in", str(csr), "-CA", str(folder / "ca.pem"), "-CAkey",
        str(folder / "ca-key.pem"), "-CAcreateserial", "-days", "2", "-extfile", str(extfile),
        "-out", str(cert))


# -- the second engine ---------------------------------------------------------------------------


@dataclass
class TlsEngine:
    """A dockerd with its own data root, exec root, pid file and bridge, TLS on 127.0.0.1."""

    folder: Path
    certs: dict[str, Path]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> None:
        for sub in ("data", "exec"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        log = (self.folder / "dockerd.log").open("ab")
        c = self.certs
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.folder / "data"), "--exec-root",
             str(self.folder / "exec"), "--pidfile", str(self.folder / "pid"),
             "-H", self.url, "--tlsverify", "--tlscacert", str(c["ca.pem"]),
             "--tlscert", str(c["server.pem"]), "--tlskey", str(c["server-key.pem"]),
             "--iptables=false", "--ip-masq=false", "--bridge", BRIDGE],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("second dockerd exited: "
                                   + (self.folder / "dockerd.log").read_text()[-2000:])
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                        timeout=1):
                time.sleep(1.0)  # listening; give the API a moment
                return
            time.sleep(0.5)
        raise RuntimeError(f"second dockerd did not listen on {self.url} in {timeout_s:.0f} s")

    def stop(self) -> None:
        """SIGTERM by its pid; SIGKILL when it does not end; its mounts released."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


def add_bridge() -> None:
    run("ip", "link", "add", "name", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", GATEWAY, "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    for rule in _nat_rules():
        run("iptables", *rule[0], "-I", *rule[1])


def remove_bridge() -> None:
    for rule in _nat_rules():
        while run("iptables", *rule[0], "-D", *rule[1], check=False).returncode == 0:
            pass
    run("ip", "link", "delete", BRIDGE, check=False)


def _nat_rules() -> list[tuple[list[str], list[str]]]:
    """Outbound traffic of the second engine's builds (package indexes), nothing else."""
    tag = ["-m", "comment", "--comment", RULE_TAG]
    return [
        (["-t", "nat"], ["POSTROUTING", "-s", SUBNET, "!", "-o", BRIDGE, "-j", "MASQUERADE",
                         *tag]),
        ([], ["FORWARD", "-i", BRIDGE, "-j", "ACCEPT", *tag]),
        ([], ["FORWARD", "-o", BRIDGE, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
              "-j", "ACCEPT", *tag]),
    ]


def release_mounts(folder: Path) -> None:
    """Unmount anything a killed engine left under its folder, before the folder goes."""
    found = run("findmnt", "-rn", "-o", "TARGET", check=False).stdout.split()
    for target in sorted((t for t in found if t.startswith(str(folder))), reverse=True):
        run("umount", "-l", target, check=False)


# -- sshd on the loopback address ------------------------------------------------------------------


@dataclass
class SshServer:
    folder: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    made_privsep: bool = False

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def start(self) -> None:
        f = self.folder
        f.mkdir(parents=True, exist_ok=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(f / "host_key"))
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(f / "id_test"))
        shutil.copy(f / "id_test.pub", f / "authorized_keys")
        (f / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {f / 'host_key'}\n"
            f"PidFile {f / 'sshd.pid'}\nAuthorizedKeysFile {f / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n"
            "StrictModes no\n")
        if not Path("/run/sshd").is_dir():  # sshd's privilege separation folder
            Path("/run/sshd").mkdir(mode=0o755)
            self.made_privsep = True
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(f / "sshd_config")],
                                     stdout=(f / "sshd.log").open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                        timeout=1):
                return
            time.sleep(0.2)
        raise RuntimeError("sshd did not listen: " + (f / "sshd.log").read_text()[-2000:])

    def client_bin(self) -> Path:
        """A folder with an `ssh` that uses the test's key and known-hosts file: put it first
        on PATH (the SDK shells out to `ssh`, which reads the config of the passwd home)."""
        f = self.folder
        (f / "ssh_config").write_text(
            f"Host 127.0.0.1\n  Port {self.port}\n  IdentityFile {f / 'id_test'}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {f / 'known_hosts'}\n"
            "  StrictHostKeyChecking accept-new\n  BatchMode yes\n")
        bin_dir = f / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "ssh"
        wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {f / 'ssh_config'} \"$@\"\n")
        wrapper.chmod(0o755)
        return bin_dir

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
        if self.made_privsep:
            shutil.rmtree("/run/sshd", ignore_errors=True)
