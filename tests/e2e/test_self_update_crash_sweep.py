"""kill -9 sweep of a daemon self-update, with built pyz files under a stand-in for systemd that
applies the shipped unit (tests/systemd_standin.py).

For each kill point (docs/updates.md, "Kill points") the stand-alone daemon 1.0.0 is asked to update
itself to 1.1.0; the process that reaches the point stops there (DAEMON_TEST_PAUSE_AT, so the point is
reached by an event, never by a delay), and the test kills it with SIGKILL, alone or together with
its self-update watcher. The stand-in restarts it as systemd would. Every trial must then settle,
within a bound, to exactly one daemon (the unit's main process, answering on its control socket),
the same version running, on disk and in the update record, no marker or journal left, and no other
process of the trial (old daemon, watcher, compile worker) alive or left unreaped by the daemon.
A trial that ends on the old version retries the update, which must then commit."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon_app import control
from daemon_app.errors import ControlError
from daemon_app.update.selfupdate import read_marker
from daemon_app.update.state import Journal, UpdateState
from tests.e2e.test_self_update import build
from tests.helpers import ROOT, short_tmpdir, wait_until, write_config
from tests.update_support import base_config, new_ed25519, public_pem, write_release

pytestmark = pytest.mark.slow

OLD, NEW = "1.0.0", "1.1.0"
UNIT_FILE = ROOT / "deploy" / "daemon.service"
STANDIN = ROOT / "tests" / "systemd_standin.py"
POINTS = ["before_watcher", "swap_window", "before_exec", "unpack", "new_start", "before_commit",
          "after_commit"]
SETTLE_S = 90.0
# Where the outcome is decided by what is left alive. The daemon killed alone before its commit is
# usually rolled back by its watcher (it sees the pid die within 0.1 s, before systemd's RestartSec
# ends), but a restart that adopts the marker first is as correct: either version may win then.
EXPECTED = {("before_watcher", "daemon"): OLD, ("before_watcher", "daemon+watcher"): OLD,
            ("after_commit", "daemon"): NEW, ("after_commit", "daemon+watcher"): NEW,
            **{(point, "daemon+watcher"): NEW
               for point in ("swap_window", "before_exec", "unpack", "new_start", "before_commit")}}
# Trials that retry the update when they end on the old version: the ones whose kill came before or
# during the new build's first unpack (the retry must not hang on anything the kill left behind).
RETRY = ("before_watcher", "swap_window", "unpack")


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    if importlib.util.find_spec("shiv") is None:
        pytest.skip("shiv is not installed (make venv)")
    d = tmp_path_factory.mktemp("sweep-pyz")
    return {OLD: build(d / "old.pyz", OLD), NEW: build(d / "new.pyz", NEW)}


@pytest.fixture(scope="module")
def warm_root(builds, tmp_path_factory) -> Path:
    """A SHIV_ROOT with both builds unpacked: each trial starts from a copy (the `unpack` trial
    removes the new build's directory from its copy, so that its first unpack happens in the trial)."""
    root = tmp_path_factory.mktemp("sweep-shiv")
    for version, pyz in builds.items():
        installed = root.parent / f"sweep-{version}" / "daemon.pyz"  # shiv names the directory after the file
        installed.parent.mkdir()
        shutil.copy(pyz, installed)
        subprocess.run([sys.executable, str(installed), "version"], check=True, capture_output=True,
                       env={**clean_env(), "SHIV_ROOT": str(root)}, timeout=300, cwd="/")
    assert build_dir(root, builds[OLD]).is_dir() and build_dir(root, builds[NEW]).is_dir()
    return root


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "DAEMON_", "SHIV_", "INVOCATION_ID", "NOTIFY_SOCKET"))}


def build_dir(root: Path, pyz: Path) -> Path:
    """Where shiv unpacks this build (named after the installed file, daemon.pyz)."""
    with zipfile.ZipFile(pyz) as zf:
        build_id = json.loads(zf.read("environment.json"))["build_id"]
    return root / f"daemon.pyz_{build_id}"


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a pid, or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def processes_mentioning(text: str) -> dict[int, tuple[str, int]]:
    """Every process whose command line names `text` (the trial's directory): {pid: (state, ppid)}."""
    found = {}
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if needle not in fh.read():
                    continue
        except OSError:
            continue
        st = proc_stat(int(entry))
        if st is not None:
            found[int(entry)] = st
    return found


def zombie_children(parent: int) -> list[int]:
    """Exited children `parent` has not reaped (a zombie's command line is empty: look at all)."""
    return [int(e) for e in os.listdir("/proc")
            if e.isdigit() and proc_stat(int(e)) == ("Z", parent)]


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Trial:
    dir: Path
    builds: dict[str, Path]
    standin: subprocess.Popen[bytes] | None = None
    by_hand: subprocess.Popen[bytes] | None = None

    @property
    def work(self) -> Path:
        return self.dir / "w"

    @property
    def pyz(self) -> Path:
        return self.dir / "bin" / "daemon.pyz"

    @property
    def sock(self) -> str:
        return str(self.work / "control.sock")

    @property
    def pause_file(self) -> Path:
        return self.dir / "paused"

    def setup(self, warm_root: Path, point: str, *, systemd: bool = True) -> None:
        key = new_ed25519()
        (self.work / "keys").mkdir(parents=True)
        (self.work / "keys" / "update.pub").write_bytes(public_pem(key))
        self.pyz.parent.mkdir()
        self.pyz.write_bytes(self.builds[OLD].read_bytes())
        os.chmod(self.pyz, 0o755)
        write_release(self.dir / "release", key, "daemon", NEW, self.builds[NEW].read_bytes())
        shiv = self.dir / "shiv"
        shutil.copytree(warm_root, shiv, symlinks=True)
        if point == "unpack":
            shutil.rmtree(build_dir(shiv, self.builds[NEW]))
        self.config = write_config(self.dir / "daemon.yaml", base_config(
            self.work, daemon={"report_interval": "300ms", "shutdown_timeout": "5s"},
            update={"daemon_path": str(self.pyz), "min_free_bytes": 0, "self_update_deadline": "60s"}))
        # The shipped unit, with this trial's SHIV_ROOT and a shorter RestartSec (still >= 1 s, the
        # floor the unit itself documents) to keep the sweep short.
        unit = UNIT_FILE.read_text()
        unit, n = re.subn(r"^Environment=SHIV_ROOT=.*$", f"Environment=SHIV_ROOT={shiv}", unit, flags=re.M)
        assert n == 1
        unit, n = re.subn(r"^RestartSec=.*$", "RestartSec=1s", unit, flags=re.M)
        assert n == 1
        (self.dir / "daemon.service").write_text(unit)
        self.env = {**clean_env(), "DAEMON_TEST_PAUSE_AT": point,
                    "DAEMON_TEST_PAUSE_FILE": str(self.pause_file)}
        if not systemd:
            self.env["SHIV_ROOT"] = str(shiv)
            self.start_by_hand()
            return
        self.standin = subprocess.Popen(
            [sys.executable, str(STANDIN), str(self.dir / "daemon.service"), str(self.dir / "systemd"), "--",
             sys.executable, str(self.pyz), "-c", self.config, "run"], env=self.env, cwd="/",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_by_hand(self) -> None:
        """`python3 daemon.pyz run` as an operator (or an init without restarts) would."""
        if self.by_hand is not None:
            self.by_hand.wait(10)  # killed by the test: reap it
        self.by_hand = subprocess.Popen([sys.executable, str(self.pyz), "-c", self.config, "run"],
                                        env=self.env, cwd="/", stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)

    def main_pid(self) -> int:
        """The unit's main process, as the stand-in last started it; without systemd the pid holding
        the daemon's instance lock."""
        if self.standin is None:
            try:
                return int((self.work / "daemon.lock").read_text().strip() or 0)
            except (OSError, ValueError):
                return 0
        try:
            lines = (self.dir / "systemd" / "events.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return 0
        started = [json.loads(line) for line in lines if '"started"' in line]
        return int(started[-1]["pid"]) if started else 0

    def status(self) -> dict | None:
        try:
            return control.request(self.sock, "status", timeout=5)
        except Exception:
            return None

    def request_update(self) -> None:
        """Ask the daemon to update itself, once its update service is up (the control socket opens
        a moment before)."""
        rel = self.dir / "release"
        args = {"component": "daemon", "file": str(rel / "package"),
                "manifest_b64": base64.b64encode((rel / "manifest.json").read_bytes()).decode(),
                "signature_b64": base64.b64encode((rel / "manifest.json.sig").read_bytes()).decode()}

        def submitted() -> bool:
            try:
                job = control.request(self.sock, "update", args)["id"]
            except ControlError as exc:
                if "still starting" not in str(exc):  # the update service is not registered yet
                    raise
                return False
            return self._under_way(job)

        wait_until(submitted, timeout=60, interval=0.1, what="the update service")

    def _under_way(self, job: str) -> bool:
        """False if the job was refused because the start-up recovery still held the update lock
        (the update service answers a moment before that recovery ends): then it is asked again."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                view = control.request(self.sock, "update-progress", {"id": job}, timeout=5)
            except ControlError:
                return True  # this daemon is gone (exec'd or paused past answering): it got going
            states = [s["state"] for s in view["states"]]
            if "installing" in states:
                return True
            if view["done"]:
                error = (view["result"] or {}).get("error", "")
                assert "another update is in progress" in error, view
                return False
            time.sleep(0.05)
        raise AssertionError(f"update {job} neither went on nor ended\n{self.diagnose()}")

    def settled(self) -> str | None:
        """The version, once the trial is in its one consistent end state; None before that."""
        work = str(self.work)
        if read_marker(work) is not None or Journal(work).read() is not None:
            return None
        main = self.main_pid()
        procs = {pid: st for pid, st in processes_mentioning(str(self.dir)).items()
                 if pid != getattr(self.standin, "pid", 0) and st[0] != "Z"}
        if not main or set(procs) != {main}:
            return None
        if zombie_children(main):
            return None
        status = self.status()
        if not status or status.get("pid") != main or status.get("update") is not None:
            return None
        version = status["version"]
        if self.pyz.read_bytes() != self.builds[version].read_bytes():
            return None
        state = UpdateState(work)
        recorded = (state.installed("daemon"), state.floor("daemon"))
        if recorded not in ((NEW, NEW),) and not (version == OLD and recorded == (None, None)):
            return None
        return version

    def diagnose(self) -> str:
        """What a failed trial's message shows: the daemon's log, the update files, the processes."""
        def tail(path: Path, lines: int = 40) -> str:
            try:
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except OSError as exc:
                return str(exc)

        return "\n".join([
            f"processes: {processes_mentioning(str(self.dir))}, main {self.main_pid()}",
            f"marker: {tail(self.work / 'update' / 'pending.json')}",
            f"journal: {tail(self.work / 'update' / 'journal.json')}",
            f"systemd events:\n{tail(self.dir / 'systemd' / 'events.jsonl', 10)}",
            f"watcher.log:\n{tail(self.work / 'update' / 'watcher.log', 10)}",
            f"daemon.log:\n{tail(self.work / 'daemon.log')}"])

    def wait(self, cond, what: str, timeout: float = SETTLE_S):
        try:
            return wait_until(cond, timeout=timeout, interval=0.05, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose()}") from None

    def stop(self) -> None:
        if self.standin is not None:
            self.standin.terminate()
            try:
                self.standin.wait(30)
            except subprocess.TimeoutExpired:
                self.standin.kill()
        for pid in processes_mentioning(str(self.dir)):
            kill(pid)
        if self.by_hand is not None:
            self.by_hand.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def trial(builds):
    t = Trial(Path(short_tmpdir("sw")), builds)
    yield t
    t.stop()


def run_trial(trial: Trial, warm_root: Path, point: str, victims: str, *, systemd: bool = True) -> str:
    """Update, stop at `point`, kill the victims, and return the version the trial settles on."""
    trial.setup(warm_root, point, systemd=systemd)
    wait_until(lambda: (trial.status() or {}).get("version") == OLD, timeout=60, interval=0.1,
               what="daemon 1.0.0 answering")
    trial.request_update()
    paused = trial.wait(lambda: trial.pause_file.exists() and trial.pause_file.read_text().strip(),
                        f"the daemon stopped at {point}", timeout=120)
    marker = read_marker(str(trial.work)) or {}
    watcher = int(marker.get("watcher_pid") or 0)
    if victims == "daemon+watcher" and watcher:
        kill(watcher)
    kill(int(paused))
    if not systemd and (victims == "daemon+watcher" or not watcher):
        # Nothing is left to start a daemon: once nothing of the trial runs, an operator does.
        wait_until(lambda: not processes_mentioning(str(trial.dir)), timeout=30, interval=0.05,
                   what="every process of the trial gone")
        trial.start_by_hand()
    return trial.wait(trial.settled, f"one consistent daemon after a kill of the {victims} at {point}")


@pytest.mark.timeout(420)
@pytest.mark.parametrize("victims", ["daemon", "daemon+watcher"])
@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_every_point_of_a_self_update_ends_with_one_consistent_daemon(trial, warm_root, point,
                                                                                 victims):
    version = run_trial(trial, warm_root, point, victims)
    print(f"sweep: kill of the {victims} at {point} -> {version}")  # shown with -rP
    assert version == EXPECTED.get((point, victims), version)
    if version == OLD and point in RETRY:
        # The retry of an update after a failed one (a half-finished unpack of the new build is
        # redone; no lock left by the killed daemon holds it up).
        first = trial.main_pid()
        trial.request_update()
        assert trial.wait(trial.settled, "the retried update") == NEW
        assert trial.main_pid() == first  # exec'd in place, as systemd's main process


@pytest.mark.timeout(300)
def test_a_watcher_killed_while_the_update_is_pending_is_replaced_and_reaped(trial, warm_root):
    trial.setup(warm_root, "before_commit")
    wait_until(lambda: (trial.status() or {}).get("version") == OLD, timeout=60, interval=0.1,
               what="daemon 1.0.0 answering")
    trial.request_update()
    daemon = int(wait_until(lambda: trial.pause_file.exists() and trial.pause_file.read_text().strip(),
                            timeout=120, interval=0.05, what="the new daemon stopped before its commit"))
    first = int(read_marker(str(trial.work))["watcher_pid"])
    kill(first)

    def replaced() -> int | None:
        pid = int((read_marker(str(trial.work)) or {}).get("watcher_pid") or 0)
        return pid if pid not in (0, first) and proc_stat(pid) is not None else None

    second = wait_until(replaced, timeout=10, interval=0.05, what="a new watcher")
    assert proc_stat(second)[1] == daemon  # the daemon's own child, so it can reap it
    wait_until(lambda: proc_stat(first) is None, timeout=10, interval=0.05, what="the dead watcher reaped")
    kill(daemon)  # and the new watcher still does its job: the previous daemon comes back
    assert trial.wait(trial.settled, "one consistent daemon") == OLD


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("point", "victims", "expected"), [
    ("swap_window", "daemon", OLD), ("unpack", "daemon", OLD), ("before_commit", "daemon", OLD),
    ("before_commit", "daemon+watcher", NEW)])
def test_without_systemd_the_watcher_or_one_start_by_hand_ends_with_one_consistent_daemon(
        trial, warm_root, point, victims, expected):
    """No restart policy: the daemon killed alone is brought back by its watcher (the previous pyz);
    killed with its watcher, one start by hand settles the update."""
    assert run_trial(trial, warm_root, point, victims, systemd=False) == expected
    if expected == OLD:
        trial.request_update()
        assert trial.wait(trial.settled, "the retried update") == NEW
