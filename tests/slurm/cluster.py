"""A real one-machine Slurm cluster for the tests: Debian's slurm-wlm and munge.

``install()`` installs the packages with apt-get when they are missing; ``Cluster``
writes /etc/slurm/slurm.conf and /etc/slurm/gres.conf (the Slurm executor's inner
``srun`` runs without any ``SLURM_*`` variable, so ``SLURM_CONF`` cannot point
elsewhere), starts its own munged, slurmctld and slurmd in the foreground, and on
``stop()`` cancels the jobs left, ends those three processes by their PIDs and removes
the files it wrote. Everything else (state, logs, the munge key and socket, placeholder
GPU device files) lives in a private temporary folder.

``Unavailable`` says why a cluster cannot be had here; the tests turn it into a skip.

By hand (as root):  python tests/slurm/cluster.py  -- starts a cluster, waits for Enter.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
MARKER = "Written by hspec tests/slurm/cluster.py"
ETC = Path("/etc/slurm")
LOCK = Path(tempfile.gettempdir()) / "hspec-slurm-test.lock"
BINARIES = (
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "scancel",
    "scontrol",
)


# slurmd runs it (as root) before a job's first step: one line per job, its allocated GPUs
PROLOG = """#!/bin/sh
echo "$SLURM_JOB_ID ${{SLURM_JOB_GPUS:-}}" >> {record}
exit 0
"""


class Unavailable(Exception):
    """A Slurm cluster cannot be installed or started here (the message says why)."""


def missing_binaries() -> list[str]:
    found = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [name for name in BINARIES if shutil.which(name, path=found) is None]


def install(timeout: float = 240) -> None:
    """Install Debian's slurm-wlm (slurmctld, slurmd, client commands) and munge when
    any of their programs is missing; raise Unavailable when that cannot be done."""
    if not missing_binaries():
        return
    if not sys.platform.startswith("linux"):
        raise Unavailable("Slurm needs Linux")
    if os.geteuid() != 0:
        raise Unavailable(
            f"Slurm is not installed ({', '.join(missing_binaries())} "
            "missing) and installing it needs root"
        )
    if shutil.which("apt-get") is None:
        raise Unavailable("Slurm is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    log = []
    for attempt in ("install", "update", "install"):
        cmd = command if attempt == "install" else ["apt-get", "update", "-q"]
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{' '.join(cmd)} took over {timeout:.0f} s") from None
        log.append(done.stdout[-2000:] + done.stderr[-2000:])
        if attempt == "install" and done.returncode == 0:
            break
    if missing_binaries():
        raise Unavailable(
            "apt-get could not install slurm-wlm and munge: "
            + " | ".join(line.strip() for line in log)
        )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


class Cluster:
    """slurmctld + slurmd + munged on this host, one partition ("debug", the default)
    with one node: the host's CPUs, max(its memory, 8 GB), ``gpus`` placeholder GPUs."""

    def __init__(self, gpus: int = 2, min_memory_mb: int = 8192):
        self.host = socket.gethostname().split(".")[0]
        self.gpus = gpus
        self.cpus = os.cpu_count() or 1
        # config_overrides: the node may claim more memory than the host has (nothing
        # is enforced without cgroups); the demo's rules ask for up to 4 GB each
        self.mem_mb = max(memory_mb(), min_memory_mb)
        self.state: Path | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.written: list[Path] = []
        self._lock = None

    # -- files -------------------------------------------------------------------
    def _claim(self, path: Path) -> None:
        """Refuse to overwrite a configuration this module did not write."""
        if path.exists() and MARKER not in path.read_text(errors="replace"):
            raise Unavailable(
                f"{path} exists and is not ours: a real Slurm "
                "installation is configured here; not touching it"
            )

    def _write(self, path: Path, text: str) -> None:
        self._claim(path)
        path.write_text(text)
        self.written.append(path)

    def slurm_conf(self) -> str:
        template = Template((HERE / "slurm.conf.in").read_text())
        return template.substitute(
            marker=MARKER,
            host=self.host,
            ctld_port=free_port(),
            d_port=free_port(),
            munge_socket=self.state / "munge" / "munge.socket",
            state=self.state,
            cpus=self.cpus,
            mem_mb=self.mem_mb,
            gpus=self.gpus,
        )

    def gres_conf(self) -> str:
        devices = self.state / "dev"
        devices.mkdir()
        lines = [
            f"# {MARKER}",
            "# placeholder GPUs: character devices like /dev/null, so that Slurm "
            "schedules GPU requests on a machine without GPUs",
        ]
        for index in range(self.gpus):
            path = devices / f"nvidia{index}"
            try:
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            except OSError:
                path.touch()
            lines.append(f"NodeName={self.host} Name=gpu File={path}")
        return "\n".join(lines) + "\n"

    # -- daemons -----------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        """Start a daemon in the foreground, in its own session (a Ctrl-C of the tests
        reaches Snakemake, which cancels its jobs, not the daemons), ended with SIGTERM
        should this process die without calling stop()."""
        log = open(self.state / f"{name}.out", "w")
        self.processes[name] = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM")},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise Unavailable(f"{name} exited ({process.returncode}): " + self.logs(name))

    def logs(self, name: str) -> str:
        text = ""
        if self.state is None:
            return text
        for path in (self.state / f"{name}.out", self.state / f"{name}.log"):
            if path.exists():
                text += path.read_text(errors="replace")[-1500:]
        return text.strip().replace("\n", " | ")

    def _take_lock(self) -> None:
        """One test cluster per machine: /etc/slurm/slurm.conf is a single file."""
        self._lock = open(LOCK, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise Unavailable(
                f"another test cluster runs on this machine ({LOCK} is locked)"
            ) from None

    def start(self, timeout: float = 60) -> Cluster:
        install()
        if os.geteuid() != 0:
            raise Unavailable("starting slurmd and writing /etc/slurm needs root")
        self._take_lock()
        try:
            if not ETC.is_dir():
                raise Unavailable(f"{ETC} is missing after the installation")
            for name in ("slurm.conf", "gres.conf"):
                self._claim(ETC / name)
            # short: the munge socket path must fit a Unix socket address (108 bytes)
            self.state = Path(tempfile.mkdtemp(prefix="hspec-slurm-"))
            (self.state / "munge").mkdir(mode=0o700)
            for sub in ("ctld", "d"):
                (self.state / sub).mkdir()
            prolog = self.state / "prolog.sh"
            prolog.write_text(PROLOG.format(record=self.state / "gpus.txt"))
            prolog.chmod(0o755)
            key = self.state / "munge" / "munge.key"
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
            self._write(ETC / "gres.conf", self.gres_conf())
            self._write(ETC / "slurm.conf", self.slurm_conf())
            munge = self.state / "munge"
            sbin = "/usr/sbin:/sbin:" + os.environ.get("PATH", "/usr/bin:/bin")
            self._spawn(
                "munged",
                [
                    shutil.which("munged", path=sbin),
                    "--foreground",
                    "--force",
                    f"--socket={munge}/munge.socket",
                    f"--key-file={key}",
                    f"--pid-file={munge}/munged.pid",
                    f"--log-file={munge}/munged.log",
                    f"--seed-file={munge}/munged.seed",
                ],
            )
            self._wait(lambda: (munge / "munge.socket").exists(), "munged", timeout)
            self._spawn("slurmctld", [shutil.which("slurmctld", path=sbin), "-D", "-i"])
            self._spawn("slurmd", [shutil.which("slurmd", path=sbin), "-D"])
            self._wait(self._node_ready, "slurmctld and slurmd", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _node_ready(self) -> bool:
        try:
            done = subprocess.run(
                ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=10
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0 and done.stdout.strip() in ("idle", "mixed")

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if ready():
                return
            time.sleep(0.5)
        raise Unavailable(
            f"{what} not ready within {timeout:.0f} s: "
            + " ".join(self.logs(name) for name in self.processes)
        )

    def allocated_gpus(self) -> dict[str, str]:
        """Job id -> the GPU indices Slurm allocated to it ("" for none), as the
        prolog recorded them."""
        record = self.state / "gpus.txt"
        lines = record.read_text().splitlines() if record.exists() else []
        return {line.split(" ", 1)[0]: line.partition(" ")[2].strip() for line in lines}

    def stop(self) -> None:
        """Cancel the jobs left, end the daemons this object started (by PID), remove
        the files it wrote. Safe to call twice."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            try:  # every job on this cluster is a test's
                subprocess.run(
                    ["scancel", "--quiet", f"--user={os.getuid()}"], capture_output=True, timeout=30
                )
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    queue = subprocess.run(
                        [
                            "squeue",
                            "--noheader",
                            "--format=%i",
                            "--states=PENDING,RUNNING,COMPLETING",
                        ],
                        capture_output=True,
                        text=True,
                        timeout=30,
                    )
                    if queue.returncode or not queue.stdout.strip():
                        break
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None:
                continue
            if process.poll() is None:
                process.terminate()  # SIGTERM to this Popen's own PID
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=15)
        while self.written:
            path = self.written.pop()
            if path.exists() and MARKER in path.read_text(errors="replace"):
                path.unlink()
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)
            self.state = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    with Cluster() as cluster:
        print(
            f"Slurm up: state in {cluster.state}; "
            f"PIDs { ({n: p.pid for n, p in cluster.processes.items()}) }"
        )
        subprocess.run(["sinfo"])
        input("Enter stops it. ")
