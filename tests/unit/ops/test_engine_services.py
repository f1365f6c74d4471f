"""A service that cannot start fails the daemon loudly; a service thread that dies later is
restarted, then reported: never a daemon that silently runs without its Agent supervisor or link.

Real engine, real Agent supervisor with the sample Agent, real threads; the supervisor's thread is
made to die the way a thread dies in production (its selector closed under it: an exception out
of its loop; or its loop told to quit: a thread that just ends).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from daemon_app import engine as engine_mod
from daemon_app.errors import AgentStartError, ManagerConnectError
from tests.helpers import ROOT, wait_until

SAMPLE_AGENT = str(ROOT / "examples" / "sample_agent.py")
AGENT = {"enabled": True, "binary_path": SAMPLE_AGENT, "args": ["--interval", "0.2"], "stop_timeout": "2s",
         "start_seconds": "0.3s"}


def drive(engine, scenario) -> int:
    """Run the engine's loop here (signals need the main thread) while `scenario` runs beside it;
    re-raise what the scenario raised. Returns run_forever's exit code."""
    failure: list[BaseException] = []

    def driver():
        try:
            scenario()
        except BaseException as exc:
            failure.append(exc)
            engine.post("stop", "scenario failed")

    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    code = engine.run_forever()
    thread.join(30)
    if failure:
        raise failure[0]
    return code


def agent_pid(engine) -> int:
    return wait_until(lambda: (engine.status()["agent"] or {}).get("state") == "RUNNING"
                      and engine.status()["agent"]["pid"], timeout=30, what="the Agent RUNNING")


def kill_supervisor_thread(supervisor, *, quietly: bool = False) -> threading.Thread:
    """End the supervisor's thread: with an exception (its selector closed) or quietly (told to quit)."""
    thread = supervisor._thread
    if quietly:
        supervisor._quit = True
    else:
        supervisor._sel.close()
    supervisor._waker.wake()
    thread.join(10)
    assert not thread.is_alive()
    return thread


@pytest.fixture
def agents():
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_service_that_cannot_be_built_fails_the_start_with_its_d_code(make_engine, monkeypatch, work_dir):
    monkeypatch.setitem(sys.modules, "daemon_app.comm.link", None)  # `import` raises ImportError
    engine = make_engine(manager={"address": "127.0.0.1:9"})
    with pytest.raises(ManagerConnectError) as caught:
        engine.start()
    assert str(caught.value).startswith("D2001 manager cannot start: ModuleNotFoundError: ")
    # Nothing is left behind: the lock is free, the control socket gone.
    assert not os.path.exists(engine.cfg.daemon.control_socket or work_dir / "control.sock")
    monkeypatch.delitem(sys.modules, "daemon_app.comm.link")
    again = make_engine()
    again.start()
    again.shutdown()


@pytest.mark.timeout(90)
def test_a_service_thread_that_dies_at_start_stops_the_daemon_with_exit_1_and_its_d_code(make_engine, agents):
    engine = make_engine(agent=AGENT)
    engine.start()
    agents.append(agent_pid(engine))
    assert drive(engine, lambda: kill_supervisor_thread(engine.agent)) == 1
    assert isinstance(engine.fatal, AgentStartError)
    assert str(engine.fatal).startswith("D3001 agent cannot start: thread agent-supervisor died: ")
    assert engine.state == "stopped"
    os.kill(agents[0], 0)  # the Agent itself is never taken down with the daemon


@pytest.mark.timeout(120)
def test_a_service_thread_that_dies_later_is_restarted_then_reported(make_engine, agents, monkeypatch,
                                                                     caplog):
    monkeypatch.setattr(engine_mod, "START_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(engine_mod, "SERVICE_RESTARTS", 1)
    engine = make_engine(agent=AGENT)
    engine.start()
    pid = agent_pid(engine)
    agents.append(pid)

    def scenario():
        first = engine.agent
        kill_supervisor_thread(first)
        # Restarted: a new supervisor that adopts the same, still running Agent.
        wait_until(lambda: engine.agent is not None and engine.agent is not first, timeout=20,
                   what="a new Agent supervisor")
        assert agent_pid(engine) == pid
        assert engine.status()["services_failed"] == {}
        assert any(r.getMessage().startswith("D3001 agent stopped: thread agent-supervisor died: ")
                   and "restarting it (1 of 1)" in r.getMessage() for r in caplog.records)

        kill_supervisor_thread(engine.agent, quietly=True)  # ends without an exception this time
        wait_until(lambda: engine.status()["services_failed"], timeout=20, what="the failure reported")
        failed = engine.status()["services_failed"]
        assert failed == {"agent": "D3001 agent stopped: thread agent-supervisor ended"}
        assert engine.agent is None and "FAILED agent" in engine.status_line()
        assert engine.state == "running"  # the daemon goes on (collection, reports) and says so
        os.kill(pid, 0)
        engine.post("stop", "test")

    assert drive(engine, scenario) == 0


@pytest.mark.timeout(120)
def test_run_exits_1_with_d2001_when_the_manager_link_cannot_import_its_grpc_library(tmp_path):
    from daemon_manager import pki

    pki.init(tmp_path / "pki", ["node-a"])
    broken = tmp_path / "broken"
    for name in ("grpc", "grpclib"):  # whichever the link uses: importing it fails
        (broken / name).mkdir(parents=True)
        (broken / name / "__init__.py").write_text("raise ImportError('simulated: no binary for this host')")
    from tests.helpers import base_config, write_config

    tls = {"ca_file": "ca.crt", "cert_file": "node-a.crt", "key_file": "node-a.key"}
    cfg = base_config(tmp_path, manager={"address": "127.0.0.1:9",
                                         "tls": {k: str(tmp_path / "pki" / v) for k, v in tls.items()}})
    path = write_config(tmp_path / "daemon.yaml", cfg)
    env = {**os.environ, "PYTHONPATH": f"{broken}{os.pathsep}{ROOT}"}
    result = subprocess.run([sys.executable, "-m", "daemon_app", "-c", path, "run"], capture_output=True,
                            text=True, env=env, timeout=90, cwd=str(tmp_path))
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("D2001 manager cannot start: ") and "ImportError" in last, result.stderr
    assert "simulated: no binary for this host" in last
