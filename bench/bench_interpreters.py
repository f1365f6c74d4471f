"""The same dist/daemon.pyz under the distributions' own python3: Debian 11 (3.9), this machine's
3.11 and Debian 13 (3.13), side by side: time to READY=1 and idle RSS, stand-alone.

    sudo .venv/bin/python bench/bench_interpreters.py [--quick] [--runs N] [--idle S]

3.9 and 3.13 run in the Debian root filesystems of `make compat` (tests/compat/rootfs.py; made
when missing: root, debootstrap), with chroot, so each is the interpreter a host of that
distribution runs the pyz with; 3.11 is /usr/bin/python3 here. Every run is stand-alone (no
Manager, no Agent: the Manager link is measured by bench_idle.py) from a warm extraction root.
READY=1 arrives on a NOTIFY_SOCKET datagram socket inside the root. Idle RSS is VmRSS after
--idle seconds (default 30; --quick 10). Human lines go to stderr; the last stdout line is JSON:
ready_s_py39, idle_rss_mb_py39, ready_s_py311, ... (seconds, MB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.compat import rootfs  # noqa: E402

PYZ = ROOT / "dist" / "daemon.pyz"


class Host:
    """Where the pyz runs: a root directory (/ for this machine) and its python3."""

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root
        self.inside = f"/tmp/bench-interp-{uuid.uuid4().hex[:8]}"
        self.dir = root / self.inside.lstrip("/")
        self.dir.mkdir(parents=True)
        shutil.copyfile(PYZ, self.dir / "daemon.pyz")
        work = self.inside
        raw = {"daemon": {"work_dir": work, "log_file": f"{work}/daemon.log",
                          "pid_file": f"{work}/daemon.pid", "control_socket": f"{work}/control.sock",
                          "log_level": "info"},
               "agent": {"enabled": False}}
        (self.dir / "daemon.yaml").write_text(yaml.safe_dump(raw))

    def argv(self, *args: str) -> list[str]:
        env = ["HOME=/root", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", f"SHIV_ROOT={self.inside}/shiv",
               f"NOTIFY_SOCKET={self.inside}/notify.sock"]
        chroot = [] if self.root == Path("/") else ["chroot", str(self.root)]
        return [*chroot, "/usr/bin/env", "-i", *env, "/usr/bin/python3", f"{self.inside}/daemon.pyz",
                "-c", f"{self.inside}/daemon.yaml", *args]

    def python_version(self) -> str:
        chroot = [] if self.root == Path("/") else ["chroot", str(self.root)]
        code = "import platform; print(platform.python_version())"
        return subprocess.run([*chroot, "/usr/bin/python3", "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip()

    def run(self, idle: float = 0.0) -> tuple[float, int]:
        """Seconds from exec to READY=1, and VmRSS (bytes) after `idle` more seconds."""
        path = self.dir / "notify.sock"
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(60)
        try:
            t0 = time.monotonic()
            proc = subprocess.Popen(self.argv("run"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            while b"READY=1" not in sock.recv(4096).split(b"\n"):
                pass
            ready = time.monotonic() - t0
            rss = 0
            if idle:
                time.sleep(idle)  # a benchmark window, not a test wait
                with open(f"/proc/{proc.pid}/status") as fh:
                    rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise SystemExit(f"{self.label}: daemon exited {proc.returncode}: {err.decode()[-2000:]}")
            return ready, rss
        finally:
            sock.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs and 10 s idle")
    parser.add_argument("--runs", type=int, default=0)
    parser.add_argument("--idle", type=float, default=0.0)
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 10)
    idle = args.idle or (10.0 if args.quick else 30.0)
    if not PYZ.exists():
        raise SystemExit("dist/daemon.pyz is missing: make pyz")

    results = []
    with rootfs.mounted(rootfs.ensure("bullseye")), rootfs.mounted(rootfs.ensure("trixie")):
        for label, root in (("Debian 11", rootfs.root_path("bullseye")), ("this machine", Path("/")),
                            ("Debian 13", rootfs.root_path("trixie"))):
            host = Host(label, root)
            try:
                version = host.python_version()
                host.run()  # warm-up: extraction into SHIV_ROOT, .pyc files, page cache
                times = [host.run()[0] for _ in range(runs)]
                _, rss = host.run(idle)
            finally:
                host.cleanup()
            row = {"host": label, "python": version, "ready_s": round(statistics.median(times), 4),
                   "ready_s_min": round(min(times), 4), "ready_s_max": round(max(times), 4),
                   "idle_rss_mb": round(rss / 1e6, 1), "idle_s": idle, "runs": runs}
            print(f"{label:<12} python {version:<7} READY=1 median {row['ready_s'] * 1000:.0f} ms "
                  f"(min {row['ready_s_min'] * 1000:.0f}, max {row['ready_s_max'] * 1000:.0f}); "
                  f"idle RSS after {idle:g} s {row['idle_rss_mb']} MB", file=sys.stderr)
            results.append(row)
    figures: dict[str, float] = {}
    for row in results:  # flat, as bench/run.py takes figures: ready_s_py39, idle_rss_mb_py39, ...
        tag = "py" + "".join(str(row["python"]).split(".")[:2])
        figures.update({f"ready_s_{tag}": row["ready_s"], f"idle_rss_mb_{tag}": row["idle_rss_mb"]})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
