"""A real single-node SLURM cluster on localhost for tests: slurmctld + slurmd + slurmdbd on MariaDB (so ``sacct``
works, which submitit needs to notice crashed jobs), started by hand without systemd, stopped by PID.

Everything lives in one scratch folder: configs (``SLURM_CONF`` points at it,
``/etc/slurm`` is not touched), state, logs, a private MariaDB data directory; ports are picked free, so it does not
collide with another cluster or database on the machine. Every wait is bounded.

    cluster = LocalSlurm(tmp_dir); cluster.start()
    subprocess.run(["sbatch", ...], env={**os.environ, **cluster.env})
    cluster.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "squeue", "scontrol", "mariadbd",
                  "mariadb-install-db")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "slurmdbd", "mariadb-server", "munge")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


class ClusterError(RuntimeError):
    pass


def which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def missing_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if which(b) is None]


def install_reason() -> str | None:
    """Why the packages cannot be installed here (None: they can)."""
    if os.geteuid() != 0:
        return "not root"
    if which("apt-get") is None:
        return "no apt-get"
    return None


def install(timeout: float = 600) -> None:
    """apt-get install the Debian packages (about 40 s cold). Raises ClusterError with the log tail on failure."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_lock = ["-o", "DPkg::Lock::Timeout=120"]  # another apt run holding the lock: wait instead of failing
    for cmd in (["apt-get", *wait_lock, "update", "-qq"],
                ["apt-get", *wait_lock, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{' '.join(cmd)} timed out after {timeout:.0f} s") from e
        if p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


class LocalSlurm:
    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 2
        self.ports = {k: free_port() for k in ("ctld", "slurmd", "dbd", "mysql")}
        self.conf = self.root / "etc" / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._mariadb: subprocess.Popen | None = None
        self.pidfiles = {name: self.root / f"{name}.pid" for name in ("slurmd", "slurmctld", "slurmdbd")}

    # ---- setup -------------------------------------------------------------------------------------------------
    def _write_configs(self) -> None:
        r = self.root
        for d in ("etc", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        real_mem = max(mem_total_mib() - 1024, 1024)
        self.conf.write_text(f"""\
ClusterName=ci
SlurmctldHost=localhost
SlurmctldPort={self.ports['ctld']}
SlurmdPort={self.ports['slurmd']}
SlurmUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
MailProg=/bin/true
CommunicationParameters=NoInAddrAny
ReturnToService=2
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.pidfiles['slurmctld']}
SlurmdPidFile={self.pidfiles['slurmd']}
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.ports['dbd']}
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.txt
MinJobAge=600
KillWait=5
DefMemPerCPU=1024
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={real_mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        dbd = r / "etc" / "slurmdbd.conf"  # found next to $SLURM_CONF
        dbd.write_text(f"""\
AuthType=auth/none
DbdHost=localhost
DbdPort={self.ports['dbd']}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mysql']}
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
LogFile={r}/log/slurmdbd.log
PidFile={self.pidfiles['slurmdbd']}
""")
        dbd.chmod(0o600)

    def _start_mariadb(self) -> None:
        my = self.root / "mysql"
        (my / "data").mkdir(parents=True, exist_ok=True)  # run as root: pytest's tmp folders are private (0700)
        self._sock = my / "mysqld.sock"
        self._run([which("mariadb-install-db"), "--no-defaults", "--user=root", f"--datadir={my}/data",
                   "--auth-root-authentication-method=normal", "--skip-test-db"], timeout=120)
        log = open(self.root / "log" / "mariadb.stdout", "ab")
        self._mariadb = subprocess.Popen(
            [which("mariadbd"), "--no-defaults", "--user=root", f"--datadir={my}/data", f"--socket={self._sock}",
             f"--port={self.ports['mysql']}", "--bind-address=127.0.0.1", f"--pid-file={my}/mariadb.pid",
             f"--log-error={my}/mariadb.log", "--innodb-buffer-pool-size=64M"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait(lambda: self._run(["mariadb-admin", f"--socket={self._sock}", "ping"], check=False) == 0,
                   60, "MariaDB to answer ping")
        sql = ("CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';"
               "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
        self._run(["mariadb", f"--socket={self._sock}", "-e", sql], timeout=30)

    def start(self, timeout: float = 120) -> None:
        """Start MariaDB, slurmdbd, slurmctld and slurmd; return once the node is idle and sacct answers."""
        self._write_configs()
        try:
            self._start_mariadb()
            self._run([which("slurmdbd")], timeout=30)
            self._wait(lambda: self._run(["sacctmgr", "-n", "list", "cluster"], check=False) == 0, timeout,
                       "slurmdbd to answer sacctmgr")
            self._run([which("slurmctld")], timeout=30)
            self._run([which("slurmd"), "-N", "localhost"], timeout=30)
            self._wait(lambda: self.output(["sinfo", "-h", "-N", "-o", "%T"]).strip() == "idle", timeout,
                       "the node to be idle in sinfo")
        except Exception:
            self.stop()
            raise

    # ---- teardown ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel what is still queued (a failed test may leave jobs), then stop the daemons by PID (TERM, then
        KILL after 20 s): slurmd first, MariaDB last, then any process of this cluster's jobs left over."""
        if self.pidfiles["slurmctld"].exists():
            try:
                self._run(["scancel", f"--user={os.geteuid()}"], check=False)
            except subprocess.SubprocessError:
                pass
            deadline = time.monotonic() + 30
            while self.output(["squeue", "-h"], timeout=10).strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "slurmdbd"):
            pf = self.pidfiles[name]
            if pf.exists() and pf.read_text().strip():
                _terminate(int(pf.read_text().strip()))
        for pid in self._leftovers():
            _terminate(pid, timeout=5)
        if self._mariadb is not None:
            _terminate(self._mariadb.pid)
            try:
                self._mariadb.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._mariadb = None

    def _leftovers(self) -> list[int]:
        """Processes of this cluster's jobs that outlived the daemons (a failed test can leave some): job step
        daemons run in its log folder (slurmd's working directory); job processes carry its $SLURM_CONF."""
        pids, root, conf = [], str(self.root.resolve()), f"SLURM_CONF={self.conf}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if ((proc / "comm").read_text().strip() == "slurmstepd" and os.readlink(proc / "cwd").startswith(root))\
                        or conf in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                pass
        return pids

    # ---- helpers -----------------------------------------------------------------------------------------------
    def logs(self, n: int = 40) -> str:
        out = []
        for p in sorted((self.root / "log").glob("*.log")) + sorted((self.root / "mysql").glob("*.log")):
            out.append(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)

    def output(self, cmd: list[str], timeout: float = 30) -> str:
        try:
            p = subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return ""
        return p.stdout

    def _run(self, cmd: list, timeout: float = 30, check: bool = True) -> int:
        p = subprocess.run([str(c) for c in cmd], env={**os.environ, **self.env}, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise ClusterError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {(p.stdout + p.stderr)[-2000:]}")
        return p.returncode

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ok():
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.3)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")


def _terminate(pid: int, timeout: float = 20) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child (MariaDB), so kill(pid, 0) stops seeing a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
