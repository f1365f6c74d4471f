"""Control socket: mode 0600 from birth, JSON-lines protocol, errors with D-codes, peer credentials."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from daemon_app import control
from daemon_app.control import ControlServer, NotRunning
from daemon_app.errors import ConfigValidateError, ControlError, UpdateVerifyError


def inline(fn, timeout):
    """Stands in for Engine.call in these server-only tests (the engine tests cover the real one)."""
    return fn()


@pytest.fixture
def server(work_dir):
    srv = ControlServer(str(work_dir / "control.sock"), inline)
    srv.register("echo", lambda args: {"echo": args})

    def verify(args):
        raise UpdateVerifyError("signature does not match any trusted key")

    srv.register("verify", verify)
    srv.register("boom", lambda args: 1 / 0)
    srv.start()
    yield srv
    srv.stop()


def raw(path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        return json.loads(sock.makefile("rb").readline())


def test_socket_is_0600_and_the_umask_is_restored(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    old = os.umask(0o022)
    os.umask(old)
    assert old == 0o022


def test_request_and_response(server):
    assert control.request(server.path, "echo", {"a": 1}) == {"echo": {"a": 1}}


def test_several_requests_on_one_connection(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(server.path)
        reader = sock.makefile("rb")
        for i in range(3):
            sock.sendall(json.dumps({"cmd": "echo", "args": {"i": i}}).encode() + b"\n")
            assert json.loads(reader.readline()) == {"ok": True, "result": {"echo": {"i": i}}}


def test_a_handler_error_keeps_its_d_code(server):
    with pytest.raises(ControlError) as info:
        control.request(server.path, "verify")
    assert str(info.value) == "D4002 signature does not match any trusted key"


def test_bad_requests_get_clear_errors(server):
    unknown = raw(server.path, b'{"cmd": "nope"}\n')
    assert unknown["ok"] is False and unknown["code"] == "D1004"
    assert "unknown command 'nope'" in unknown["error"] and "echo" in unknown["error"]
    assert "not JSON" in raw(server.path, b"status\n")["error"]
    assert "args must be an object" in raw(server.path, b'{"cmd": "echo", "args": [1]}\n')["error"]
    too_long = raw(server.path, b'{"cmd": "echo", "args": {"x": "' + b"y" * 70000 + b'"}}\n')
    assert "longer than" in too_long["error"]
    crashed = raw(server.path, b'{"cmd": "boom"}\n')
    assert crashed["code"] == "D1004" and "ZeroDivisionError" in crashed["error"]
    # The server survived all of that.
    assert control.request(server.path, "echo") == {"echo": {}}


def test_no_daemon_means_not_running(work_dir):
    with pytest.raises(NotRunning, match="D1004 the daemon is not running"):
        control.request(str(work_dir / "none.sock"), "status")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(work_dir / "stale.sock"))
    stale.close()  # the file stays, nobody listens: like a daemon killed with -9
    with pytest.raises(NotRunning):
        control.request(str(work_dir / "stale.sock"), "status")


def test_a_stale_socket_is_replaced_but_a_regular_file_is_not(work_dir):
    path = work_dir / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    srv = ControlServer(str(path), inline)
    srv.register("echo", lambda args: "hi")
    srv.start()
    try:
        assert control.request(str(path), "echo") == "hi"
    finally:
        srv.stop()
    assert not path.exists(), "stop removes the socket"
    path.write_text("not a socket")
    with pytest.raises(ConfigValidateError, match="exists and is not a socket"):
        ControlServer(str(path), inline).start()


def test_a_path_too_long_for_af_unix_is_a_config_error(work_dir):
    with pytest.raises(ConfigValidateError, match="D1002 .*daemon.control_socket"):
        ControlServer(str(work_dir / ("x" * 120)), inline).start()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_peers_of_another_uid_are_refused(server):
    # Get past the directory and file modes, so the SO_PEERCRED check is what refuses.
    os.chmod(os.path.dirname(server.path), 0o711)
    os.chmod(server.path, 0o666)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody and ask
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            answer = raw(server.path, b'{"cmd": "echo"}\n')
            os.write(w, json.dumps(answer).encode())
        except BaseException as exc:
            os.write(w, json.dumps({"ok": None, "error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        answer = json.loads(fh.read())
    os.waitpid(pid, 0)
    assert answer["ok"] is False and "permission denied for uid 65534" in answer["error"]


def test_a_command_asked_while_the_daemon_starts_says_so_instead_of_unknown(server):
    # Services register their commands (update, rollback, ...) as they start: until the engine has
    # started them all, a command not registered yet is "still starting", not "unknown".
    server.starting = True
    with pytest.raises(ControlError, match=r"^D\d{4} 'update': the daemon is still starting .* try again"):
        control.request(server.path, "update", {"component": "agent"})
    assert control.request(server.path, "echo", {"a": 1}) == {"echo": {"a": 1}}
    server.starting = False
    with pytest.raises(ControlError, match="unknown command 'update'; this daemon knows: boom, echo, verify"):
        control.request(server.path, "update", {"component": "agent"})


def test_json_nested_too_deep_is_answered_with_d1004_and_the_connection_goes_on(server):
    """A 40 KiB request of 20,000 nested brackets (under the line limit) made json.loads raise
    RecursionError, which is not a ValueError: the client's thread died and the request got no answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(server.path)
        reader = sock.makefile("rb")
        for nested in (b"[" * 20000 + b"]" * 20000, b'{"a":' * 10000 + b"1" + b"}" * 10000):
            sock.sendall(b'{"cmd": "echo", "args": {"x": ' + nested + b"}}\n")
            answer = json.loads(reader.readline())
            assert answer["ok"] is False and answer["code"] == "D1004"
            assert "not JSON" in answer["error"] and "nested too deep" in answer["error"]
        sock.sendall(b'{"cmd": "echo", "args": {"i": 1}}\n')  # the same connection still serves
        assert json.loads(reader.readline()) == {"ok": True, "result": {"echo": {"i": 1}}}


def test_an_unknown_command_name_is_quoted_cut_short_not_echoed_whole(server):
    answer = raw(server.path, json.dumps({"cmd": "x" * 60000}).encode() + b"\n")
    assert answer["code"] == "D1004" and "unknown command" in answer["error"]
    assert len(answer["error"]) < 300
