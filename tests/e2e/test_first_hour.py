"""The operator's first hour with the built pyz, typed as the README tells a new user to type it:
one work_dir key in a scratch directory, config check, status without -c, readable output."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, UNMEASURED_ENV, short_tmpdir, wait_until

pytestmark = pytest.mark.pyz_smoke

SAMPLE_AGENT = ROOT / "examples" / "sample_agent.py"


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short scratch directory (Unix socket paths must stay under 108 bytes) used as HOME too."""
    path = Path(short_tmpdir("fh"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def operator_env(home: Path, **extra: str) -> dict[str, str]:
    """A login-like environment: HOME is the scratch dir, nothing of ours set (no SHIV_ROOT, no
    $DAEMON_CONFIG), so the pyz unpacks into ~/.shiv like it does for a new user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_", "SHIV_"))}
    env.update(HOME=str(home), **extra)
    return env


def pyz_cmd(pyz: Path, *args: str) -> list[str]:
    return [sys.executable, str(pyz), *args]


def run(pyz: Path, home: Path, *args: str, cwd: str = "/", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pyz_cmd(pyz, *args), capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=operator_env(home, **env))


def one_key_config(scratch: Path, extra: str = "") -> Path:
    path = scratch / "daemon.yaml"
    path.write_text(f"daemon:\n  work_dir: {scratch / 'work'}\n{extra}")
    return path


def stop(proc: subprocess.Popen[bytes], pid: int | None = None) -> int:
    os.kill(pid or proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def status_json(pyz: Path, home: Path, *args: str) -> dict:
    result = run(pyz, home, *args, "status", "--format", "json")
    return json.loads(result.stdout) if result.returncode == 0 else {}


# --- paths follow work_dir; status finds the daemon without -c -----------------------------------

WRITES = re.compile(r"^(\d+) +(open|openat|creat|mkdir|mkdirat|rename|renameat|renameat2|unlink|unlinkat|"
                    r"rmdir|symlink|symlinkat|link|linkat|truncate|bind)\((.*)\) += (-?\d+)")
OPEN_FLAGS_WRITE = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")


def written_paths(trace: str, cwd: str) -> set[str]:
    """Paths the traced processes created, changed or removed (successful calls only)."""
    lines: list[str] = []
    pending: dict[str, str] = {}
    for line in trace.splitlines():  # join `<unfinished ...>` with its `<... resumed>`
        pid = line.split(" ", 1)[0]
        if line.endswith("<unfinished ...>"):
            pending[pid] = line[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^(\d+) +<\.\.\. \w+ resumed>(.*)$", line)
        if resumed and pid in pending:
            line = pending.pop(pid) + resumed.group(2)
        lines.append(line)
    out = set()
    for line in lines:
        m = WRITES.match(line)
        if not m or m.group(4).startswith("-"):
            continue
        call, args = m.group(2), m.group(3)
        if call in ("open", "openat") and not any(flag in args for flag in OPEN_FLAGS_WRITE):
            continue
        if call == "bind":
            sun = re.search(r'sun_path="([^"]+)"', args)
            if sun and not sun.group(1).startswith("@"):
                out.add(sun.group(1))
            continue
        for dirfd, path in re.findall(r'(?:(AT_FDCWD|\d+<[^>]*>), )?"([^"]*)"', args):
            if not path.startswith("/"):
                base = cwd if dirfd in ("", "AT_FDCWD") else dirfd.split("<", 1)[1].rstrip(">")
                path = os.path.join(base, path)
            out.add(os.path.normpath(path))
    return out


@pytest.fixture
def host() -> Iterator[list[str]]:
    """A command prefix that runs in a private PID namespace (a host of its own): other daemons on
    this shared test machine must not be found by `status` without -c. Everything started in it
    dies with it."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("unshare/nsenter are needed for a private PID namespace")
    # --kill-child: the namespace's init (and with it everything inside) dies with unshare.
    init = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sleep", "600"],
                            stderr=subprocess.PIPE)
    try:
        children = f"/proc/{init.pid}/task/{init.pid}/children"
        child = wait_until(lambda: init.poll() is None and Path(children).read_text().split(),
                           timeout=10, what="the namespace's init")
        if init.poll() is not None:
            why = init.stderr.read().decode() if init.stderr else ""
            pytest.skip(f"no private PID namespace here: {why}")
        # Entering a mount namespace moves to its root: give each command its directory (--wd).
        yield ["nsenter", "--target", child[0], "--pid", "--mount"]
    finally:
        init.kill()
        init.wait(10)


def in_host(host: list[str], pyz: Path, home: Path, *args: str,
            cwd: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*host, f"--wd={cwd}", "--", *pyz_cmd(pyz, *args)], capture_output=True,
                          text=True, timeout=120,
                          cwd=cwd, env=operator_env(home))


def host_status(host: list[str], pyz: Path, home: Path) -> dict:
    result = in_host(host, pyz, home, "status", "--format", "json")
    return json.loads(result.stdout) if result.returncode == 0 else {}


@pytest.mark.timeout(300)
def test_a_daemon_with_only_work_dir_writes_nothing_outside_the_scratch_dir_and_status_finds_it(
        pyz, scratch, host):
    if shutil.which("strace") is None:
        pytest.skip("strace is needed to see every file the daemon writes")
    cfg = one_key_config(scratch)
    cwd = scratch / "cwd"
    cwd.mkdir()
    trace = scratch / "trace.txt"
    proc = subprocess.Popen([*host, f"--wd={cwd}", "--",
                             "strace", "-f", "-qq", "-y", "-s", "4096", "-o", str(trace), "-e",
                             "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,"
                             "unlinkat,rmdir,symlink,symlinkat,link,linkat,truncate,bind",
                             *pyz_cmd(pyz, "-c", str(cfg), "run")],
                            # unmeasured: coverage's data files are written outside the scratch dir
                            cwd=cwd, env=operator_env(scratch, **UNMEASURED_ENV), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        # From another directory, without -c or $DAEMON_CONFIG: found through the running process.
        status = wait_until(lambda: host_status(host, pyz, scratch), timeout=120, what="status without -c")
        assert status["config"] == str(cfg)
        text = in_host(host, pyz, scratch, "status")
        assert text.returncode == 0, text.stderr
        assert (f"  asked      {scratch / 'work' / 'control.sock'} (of the running daemon pid "
                f"{status['pid']} (config {cfg}))") in text.stdout.splitlines()
        wait_until(lambda: (scratch / "work" / "reports.jsonl").exists(), timeout=60, what="a report")
        subprocess.run([*host, "--", "kill", "-TERM", str(status["pid"])], check=True, timeout=30)
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    written = written_paths(trace.read_text(), str(cwd))
    outside = sorted(p for p in written if not p.startswith((str(scratch) + "/", "/dev/", "/proc/")))
    assert not outside, f"the daemon wrote outside its scratch dir: {outside}"
    for name in ("daemon.log", "daemon.pid", "node_id", "reports.jsonl", "agent"):
        assert (scratch / "work" / name).exists(), name
    assert any(p.startswith(str(scratch / ".shiv")) for p in written), "unpacked into ~/.shiv (HOME)"
    assert not list(cwd.iterdir()), "nothing in the current directory"


@pytest.mark.timeout(300)
def test_status_without_c_names_every_daemon_when_several_run_and_none_when_none_does(pyz, scratch, host):
    none = in_host(host, pyz, scratch, "status")
    assert none.returncode == 3
    assert none.stderr.strip().endswith("asked the control socket from the built-in defaults")
    configs = []
    procs = []
    try:
        for name in ("a", "b"):
            (scratch / name).mkdir()
            cfg = scratch / name / "daemon.yaml"
            cfg.write_text(f"daemon:\n  work_dir: {scratch / name / 'work'}\nagent:\n  enabled: false\n")
            configs.append(cfg)
            procs.append(subprocess.Popen([*host, f"--wd={scratch / name}", "--",
                                           *pyz_cmd(pyz, "-c", "daemon.yaml", "run")],
                                          cwd=scratch / name, env=operator_env(scratch),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            work = scratch / name / "work"
            wait_until(lambda work=work: (work / "reports.jsonl").exists(), timeout=120, what="a daemon up")
        several = in_host(host, pyz, scratch, "status")
        assert several.returncode == 1
        assert several.stderr.startswith(
            "D1004 2 daemons are running; name one with -c FILE or --socket PATH: ")
        for cfg in configs:  # the relative -c of each is resolved against that process's directory
            assert f"(config {cfg})" in several.stderr
        chosen = in_host(host, pyz, scratch, "-c", str(configs[1]), "status", "--format", "json")
        assert json.loads(chosen.stdout)["config"] == "daemon.yaml"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(120)
def test_status_without_c_asks_daemon_config_first_and_says_so(pyz, scratch):
    cfg = one_key_config(scratch)
    result = run(pyz, scratch, "status", DAEMON_CONFIG=str(cfg))
    assert result.returncode == 3
    assert result.stderr.strip().endswith(f"{scratch / 'work' / 'control.sock'}); asked the control "
                                          f"socket from $DAEMON_CONFIG {cfg}")
    with_c = run(pyz, scratch, "-c", str(cfg), "status")
    assert with_c.stderr.strip().endswith(f"asked the control socket from -c {cfg}")


# --- config check checks the world --------------------------------------------------------------

@pytest.mark.timeout(120)
def test_config_check_warns_about_a_missing_agent_binary_and_a_typoed_plugin_section(pyz, scratch):
    cfg = one_key_config(scratch, "agent:\n  binary_path: /nonexistent/agent\n"
                                  "collectors:\n  memroy:\n    interval: 10s\n  filenrr: {}\n")
    result = run(pyz, scratch, "-c", str(cfg), "config", "check")
    assert result.returncode == 1, result.stderr
    warnings = result.stderr.splitlines()
    assert ("D1002 config: agent.binary_path: /nonexistent/agent does not exist; the Agent cannot start "
            "(the daemon runs without it and retries)") in warnings
    assert ("D1002 config: collectors.memroy: no installed plugin collects under this name (did you "
            "mean 'memory'?); this section does nothing") in warnings
    assert ("D1002 config: collectors.filenrr: no installed plugin collects under this name; this "
            "section does nothing") in warnings
    assert result.stdout.startswith("config valid with 4 warnings (above): ")  # + the update key
    assert not (scratch / "work").exists(), "config check writes nothing"


@pytest.mark.timeout(120)
def test_config_check_warns_about_an_agent_binary_that_is_not_executable(pyz, scratch):
    binary = scratch / "agent"
    binary.write_text("#!/bin/sh\n")
    cfg = one_key_config(scratch, f"agent:\n  binary_path: {binary}\n")
    result = run(pyz, scratch, "-c", str(cfg), "config", "check")
    assert result.returncode == 1
    assert f"D1002 config: agent.binary_path: {binary} is not executable (chmod +x)" in result.stderr
    binary.chmod(0o755)
    again = run(pyz, scratch, "-c", str(cfg), "config", "check")
    assert "agent.binary_path" not in again.stderr


@pytest.mark.timeout(120)
def test_config_check_passes_clean_when_the_world_is_there_and_exit_2_still_wins(pyz, scratch):
    keys = scratch / "work" / "keys"
    keys.mkdir(parents=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(scratch / "k.pem")],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(scratch / "k.pem"), "-pubout", "-out",
                    str(keys / "update.pub")], check=True, capture_output=True)
    cfg = one_key_config(scratch, f"agent:\n  binary_path: {sys.executable}\n")
    clean = run(pyz, scratch, "-c", str(cfg), "config", "check")
    assert clean.returncode == 0 and clean.stderr == "", clean.stderr
    assert clean.stdout.startswith(f"config OK: {cfg}: stand-alone; agent {sys.executable}; ")
    (keys / "update.pub").write_text("not a key\n")
    bad_key = run(pyz, scratch, "-c", str(cfg), "config", "check")
    assert bad_key.returncode == 1
    assert bad_key.stderr == (f"D1002 config: update.public_key_file: trusted keys: {keys / 'update.pub'} "
                              "holds no PEM public key; every update would be refused (D4002)\n")
    broken = one_key_config(scratch, "agent:\n  binary_path: /nonexistent\n  enabled: maybe\n")
    invalid = run(pyz, scratch, "-c", str(broken), "config", "check")
    assert invalid.returncode == 2 and invalid.stdout == ""
    assert "agent.enabled: must be true or false" in invalid.stderr


def _pki(home: Path, directory: Path) -> None:
    manager = Path(sys.executable).parent / "daemon-manager"
    subprocess.run([str(manager), "pki", "init", str(directory), "--node", "web-1"], check=True,
                   capture_output=True, env=operator_env(home), timeout=60)


@pytest.mark.timeout(120)
def test_config_check_catches_missing_and_mismatched_manager_tls_files(pyz, scratch):
    mine, other = scratch / "pki", scratch / "other-pki"
    _pki(scratch, mine)
    _pki(scratch, other)

    def check(ca: Path, cert: Path, key: Path) -> subprocess.CompletedProcess[str]:
        cfg = one_key_config(scratch, f"manager:\n  address: 127.0.0.1:1\n  tls:\n    ca_file: {ca}\n"
                                      f"    cert_file: {cert}\n    key_file: {key}\n")
        return run(pyz, scratch, "-c", str(cfg), "config", "check")

    good = check(mine / "ca.crt", mine / "web-1.crt", mine / "web-1.key")
    assert "manager.tls" not in good.stderr, good.stderr
    missing = check(mine / "ca.crt", scratch / "nope.crt", mine / "web-1.key")
    assert missing.returncode == 1
    assert (f"D1002 config: manager.tls.cert_file: {scratch / 'nope.crt'} does not exist; the Manager "
            "link cannot connect") in missing.stderr.splitlines()
    wrong_key = check(mine / "ca.crt", mine / "web-1.crt", other / "web-1.key")
    assert (f"D1002 config: manager.tls.key_file: {other / 'web-1.key'} is not the key of "
            f"{mine / 'web-1.crt'} (they do not match)") in wrong_key.stderr.splitlines()
    assert "manager.tls.ca_file" not in wrong_key.stderr
    wrong_ca = check(other / "ca.crt", mine / "web-1.crt", mine / "web-1.key")
    assert (f"D1002 config: manager.tls.ca_file: no certificate in {other / 'ca.crt'} signed"
            in wrong_ca.stderr)
    assert "manager.tls.key_file" not in wrong_ca.stderr
    not_pem = scratch / "garbage.crt"
    not_pem.write_text("hello\n")
    garbage = check(mine / "ca.crt", not_pem, mine / "web-1.key")
    assert f"manager.tls.cert_file: {not_pem} is not a PEM certificate" in garbage.stderr
    huge = scratch / "huge.crt"  # the wrong file: not read whole
    with open(huge, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    too_big = check(huge, mine / "web-1.crt", mine / "web-1.key")
    assert (f"manager.tls.ca_file: {huge} is not a PEM certificate bundle: larger than 1048576 bytes"
            in too_big.stderr)


# --- conventions ---------------------------------------------------------------------------------

def test_version_flag_and_help_name_the_program_daemon_pyz(pyz, scratch):
    version = run(pyz, scratch, "--version")
    assert version.returncode == 0
    assert re.fullmatch(r"daemon\.pyz \d+\.\d+\.\d+\S* \(python 3\.\d+\.\d+\S* on \w+\)\n", version.stdout), \
        version.stdout
    helped = run(pyz, scratch, "--help")
    assert helped.stdout.startswith("Usage: daemon.pyz [OPTIONS] COMMAND [ARGS]...")
    assert "daemon.pyz config check" in helped.stdout
    sub = run(pyz, scratch, "status", "--help")
    assert sub.stdout.startswith("Usage: daemon.pyz status [OPTIONS]")
    wrong = run(pyz, scratch, "frobnicate")
    assert wrong.returncode == 2 and "Try 'daemon.pyz --help' for help" in wrong.stderr


@pytest.mark.timeout(120)
def test_an_empty_config_file_is_the_defaults(pyz, scratch):
    empty = scratch / "empty.yaml"
    empty.write_text("# nothing set yet\n")
    shown = run(pyz, scratch, "-c", str(empty), "config", "show", "--format", "json")
    defaults = run(pyz, scratch, "config", "show", "--format", "json")
    assert shown.returncode == 0 and defaults.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == json.loads(defaults.stdout)
    checked = run(pyz, scratch, "-c", str(empty), "config", "check")
    assert checked.returncode in (0, 1) and "D1001" not in checked.stderr


@pytest.mark.timeout(120)
def test_a_daemon_in_a_terminal_writes_readable_lines_to_stderr_and_json_to_its_log_file(pyz, scratch):
    cfg = one_key_config(scratch, "agent:\n  enabled: false\n")
    main_fd, tty_fd = pty.openpty()
    proc = subprocess.Popen(pyz_cmd(pyz, "-c", str(cfg), "run"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=tty_fd, env=operator_env(scratch), cwd="/")
    os.close(tty_fd)
    seen = b""
    try:
        deadline = time.monotonic() + 90
        while b"starting" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 1.0)
            if ready:
                seen += os.read(main_fd, 65536)
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(main_fd)
    text = seen.decode(errors="replace")
    line = next(ln for ln in text.splitlines() if "starting" in ln)
    assert re.match(r"^\d\d:\d\d:\d\d INFO +daemon_app\.engine: daemon \S+ starting", line), text
    assert "{" not in line
    records = [json.loads(ln) for ln in (scratch / "work" / "daemon.log").read_text().splitlines()]
    assert any("starting" in r["message"] for r in records)


# --- human output --------------------------------------------------------------------------------

PYTHON_VALUES = re.compile(r"\bNone\b|\bTrue\b|\bFalse\b| - |agent no agent")


@pytest.mark.timeout(180)
def test_status_text_has_no_python_values_and_unmeasured_agent_figures_read_unknown(pyz, scratch):
    cfg = one_key_config(scratch, f"agent:\n  binary_path: {sys.executable}\n"
                                  f"  args: [{SAMPLE_AGENT}, --interval, '0.2']\n"
                                  "  health_check:\n    interval: 1h\n    heartbeat_timeout: 2h\n")
    proc = subprocess.Popen(pyz_cmd(pyz, "-c", str(cfg), "run"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=operator_env(scratch), cwd="/")
    agent_pid = None
    try:
        def agent_running() -> dict:
            status = status_json(pyz, scratch, "-c", str(cfg))
            agent = status.get("agent") or {}
            return agent if agent.get("state") == "RUNNING" and agent.get("heartbeats_received") else {}

        agent = wait_until(agent_running, timeout=90, what="the Agent RUNNING with a heartbeat")
        agent_pid = agent["pid"]
        # No health check has measured it yet (interval 1h): unknown, not zero.
        assert agent["cpu_percent"] is None and agent["memory_bytes"] is None
        text = run(pyz, scratch, "-c", str(cfg), "status").stdout
        line = next(ln for ln in text.splitlines() if ln.startswith("  agent "))
        assert line == (f"  agent      RUNNING pid {agent_pid} version 1.0.0, cpu unknown, rss unknown, "
                        "restarts 0, no exit seen")
        assert not PYTHON_VALUES.search(text), text
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if agent_pid:
            os.kill(agent_pid, signal.SIGKILL)


@pytest.mark.timeout(180)
def test_status_and_check_read_well_when_no_agent_ever_started(pyz, scratch):
    cfg = one_key_config(scratch, "agent:\n  binary_path: /nonexistent/agent\n")
    proc = subprocess.Popen(pyz_cmd(pyz, "-c", str(cfg), "run"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=operator_env(scratch), cwd="/")
    try:
        def failed_start() -> bool:
            agent = status_json(pyz, scratch, "-c", str(cfg)).get("agent") or {}
            return bool(agent.get("restart_count"))

        wait_until(failed_start, timeout=90, what="a failed Agent start")
        text = run(pyz, scratch, "-c", str(cfg), "status").stdout
        line = next(ln for ln in text.splitlines() if ln.startswith("  agent "))
        assert " no process," in line and "None" not in line and " - " not in line, line
        assert not PYTHON_VALUES.search(text), text
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = (scratch / "work" / "daemon.log").read_text()
    assert "agent supervision stopped; no agent was running" in log
    assert "pid - " not in log and "pid None" not in log
    off = one_key_config(scratch, "agent:\n  enabled: false\n")
    summary = run(pyz, scratch, "-c", str(off), "config", "check").stdout
    assert "no Agent (agent.enabled: false)" in summary and "agent no agent" not in summary
