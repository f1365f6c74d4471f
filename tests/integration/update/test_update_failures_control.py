"""Bad update and rollback requests on a running daemon's control socket (what `daemon update` sends,
or anything else that can reach the socket): each gets its D-coded refusal, the daemon goes on
answering, and nothing on disk changes."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from daemon_app import control
from daemon_app.errors import ControlError
from tests.helpers import base_config, short_tmpdir, wait_until, write_config
from tests.update_support import snapshot, update_config


@pytest.fixture
def running(daemon_processes):
    """A stand-alone `daemon run` (no Manager, no Agent supervision) with an Agent file 1.0.0."""
    work = Path(short_tmpdir("updc"))
    (work / "bin").mkdir()
    (work / "bin" / "agent").write_bytes(b"#!/bin/sh\necho agent 1.0.0\n")
    raw = base_config(work, agent={"binary_path": str(work / "bin" / "agent")},
                      update={"min_free_bytes": 0})
    proc = daemon_processes(write_config(work / "daemon.yaml", raw))
    sock = str(work / "control.sock")
    # The socket answers before the services are up: ready is when the update commands are known.
    wait_until(lambda: _update_service_up(sock), timeout=30, what="the update service")
    yield work, sock, update_config(work)
    assert proc.stop() == 0
    shutil.rmtree(work, ignore_errors=True)


def _update_service_up(sock: str) -> bool:
    try:
        control.request(sock, "update-progress", {"id": "probe"}, timeout=5)
    except control.NotRunning:
        return False
    except ControlError as exc:
        return "no update with id" in str(exc)
    return True


def _refused(sock: str, cmd: str, args: dict) -> ControlError:
    with pytest.raises(ControlError) as caught:
        control.request(sock, cmd, args, timeout=30)
    return caught.value


B64 = base64.b64encode(b"{}").decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("cmd", "args", "code", "phrase"), [
    ("update", {"component": "agent", "manifest_b64": "not base64!", "signature_b64": B64},
     "D1004", "must be base64"),
    ("update", {"component": "agent", "manifest_b64": ["a", "list"], "signature_b64": B64},
     "D1004", "manifest_b64 must be text, got list"),
    # A request that is not one (a field of the wrong kind or value) is the control socket's D1004,
    # whatever the field: the update never started (daemon_app/update/commands.py).
    ("update", {"component": "kernel", "manifest_b64": B64, "signature_b64": B64},
     "D1004", "component must be agent or daemon, got 'kernel'"),
    ("rollback", {"component": "../agent"}, "D1004", "component must be agent or daemon"),
    ("update-progress", {"id": "local-doesnotexist"}, "D1004", "no update with id 'local-doesnotexist'"),
], ids=["manifest-not-base64", "manifest-not-text", "unknown-component", "rollback-bad-component",
        "unknown-job"])
def test_a_bad_request_is_refused_with_its_code_and_the_daemon_goes_on(running, cmd, args, code,
                                                                       phrase) -> None:
    work, sock, cfg = running
    before = snapshot(cfg)
    err = _refused(sock, cmd, args)
    assert err.code == code, (err.code, str(err))
    assert phrase in str(err)
    assert control.request(sock, "status")["update"] is None  # no job was started
    assert snapshot(cfg) == before


@pytest.mark.timeout(60)
def test_a_rollback_request_without_a_backup_runs_as_a_job_that_fails_with_d4004(running) -> None:
    work, sock, cfg = running
    before = snapshot(cfg)
    job = control.request(sock, "rollback", {"component": "agent"})
    assert job["id"].startswith("local-")

    def finished() -> dict | None:
        view = control.request(sock, "update-progress", {"id": job["id"]})
        return view if view["done"] else None

    view = wait_until(finished, timeout=30, what="the rollback job to finish")
    assert view["kind"] == "rollback" and view["states"][-1]["state"] == "failed"
    assert view["result"]["error"].startswith("D4004 rollback: no backup of agent")
    # Polling from an offset returns only what is new: nothing, once the job is done.
    again = control.request(sock, "update-progress", {"id": job["id"], "after": view["next"]})
    assert again["states"] == [] and again["done"]
    assert snapshot(cfg) == before


@pytest.mark.timeout(60)
def test_update_progress_with_a_hostile_after_or_id_is_refused_with_d1004_and_the_job_intact(running) -> None:
    """`after` that is not a whole number >= 0 used to be taken silently as 0 ("abc", -1, 1.5, []),
    or as 1 (true): a poller with a bug got the whole history again, forever, without a word."""
    work, sock, cfg = running
    job = control.request(sock, "rollback", {"component": "agent"})
    view = wait_until(lambda: (lambda v: v if v["done"] else None)(
        control.request(sock, "update-progress", {"id": job["id"]})), timeout=30, what="the job to finish")
    for after in ("abc", "0", -1, 1.5, True, [], {"a": 1}):
        err = _refused(sock, "update-progress", {"id": job["id"], "after": after})
        assert err.code == "D1004" and "after must be a whole number" in str(err), (after, str(err))
    far = control.request(sock, "update-progress", {"id": job["id"], "after": 10**30})
    assert far["states"] == [] and far["next"] == view["next"]
    err = _refused(sock, "update-progress", {"id": "x" * 60000})
    assert err.code == "D1004" and "no update with id" in str(err) and len(str(err)) < 300
    assert control.request(sock, "update-progress", {"id": job["id"]}) == view  # the job as it was
