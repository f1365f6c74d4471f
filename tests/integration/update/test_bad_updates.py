"""Every bad update fails with its D-code and changes nothing: installed file, floor, download_dir."""

from __future__ import annotations

import base64
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from daemon_app.hookspecs import hookimpl
from daemon_app.plugins import Plugins
from daemon_app.update import errors as E
from daemon_app.update.flow import UpdateLock, UpdateRequest
from tests.update_support import TestPKI, new_ed25519, public_pem, snapshot, update_config

BIG = b"agent 2.0.0\n" * 100_000  # ~1.2 MB: the endless drip never reaches it, the deadline does


def flipped_byte(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    data = bytearray((rel / "package").read_bytes())
    data[len(data) // 2] ^= 0x01
    (rel / "package").write_bytes(bytes(data))
    return env.request(rel)


def unknown_key(env, server) -> UpdateRequest:
    return env.request(env.release("2.0.0", key=new_ed25519()))


def truncated_signature(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    sig = base64.b64decode((rel / "manifest.json.sig").read_bytes())
    (rel / "manifest.json.sig").write_bytes(base64.b64encode(sig[:-8]))
    return env.request(rel)


def truncated_base64(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    text = (rel / "manifest.json.sig").read_bytes().strip()
    (rel / "manifest.json.sig").write_bytes(text[:-3])
    return env.request(rel)


def non_base64_signature(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    (rel / "manifest.json.sig").write_bytes(b"this is not base64 at all!\n")
    return env.request(rel)


def empty_signature(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    (rel / "manifest.json.sig").write_bytes(b"")
    return env.request(rel)


def manifest_edited_after_signing(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    raw = (rel / "manifest.json").read_bytes()
    (rel / "manifest.json").write_bytes(raw.replace(b'"2.0.0"', b'"9.0.0"'))
    return env.request(rel)


def agent_manifest_for_daemon(env, server) -> UpdateRequest:
    (env.work / "bin" / "daemon.pyz").write_bytes(b"old daemon")
    return env.request(env.release("2.0.0"), component="daemon")


def replayed_older_version(env, server) -> UpdateRequest:
    return env.request(env.release("0.9.0"))


def expired_manifest(env, server) -> UpdateRequest:
    return env.request(env.release("2.0.0", expires_in=-60))


def manifest_size_larger_than_file(env, server) -> UpdateRequest:
    package = b"agent 2.0.0\n" * 10
    return env.request(env.release("2.0.0", package, size=len(package) + 5))


def local_file_larger_than_manifest(env, server) -> UpdateRequest:
    package = b"agent 2.0.0\n" * 10
    return env.request(env.release("2.0.0", package, size=len(package) - 5))


def signed_garbage_manifest(env, server) -> UpdateRequest:
    from daemon_manager.release import sign_bytes

    rel = env.release("2.0.0")
    raw = b'{"component": "agent", "version": "two"}'
    (rel / "manifest.json").write_bytes(raw)
    (rel / "manifest.json.sig").write_bytes(base64.b64encode(sign_bytes(env.key, raw)))
    return env.request(rel)


def server_sends_more_than_size(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    server.package = (rel / "package").read_bytes()
    return env.request(rel, url=server.url("/big"))


def endless_download(env, server) -> UpdateRequest:
    env.reconfigure(download_deadline="1s", read_timeout="5s")
    rel = env.release("2.0.0", BIG)
    return env.request(rel, url=server.url("/endless"))


def stalled_download(env, server) -> UpdateRequest:
    env.reconfigure(read_timeout="500ms")
    rel = env.release("2.0.0")
    server.package = (rel / "package").read_bytes()
    return env.request(rel, url=server.url("/stall"))


def not_found(env, server) -> UpdateRequest:
    return env.request(env.release("2.0.0"), url=server.url("/no-such-package"))


def connection_refused(env, server) -> UpdateRequest:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return env.request(env.release("2.0.0"), url=f"https://127.0.0.1:{port}/pkg")


def plain_http_url(env, server) -> UpdateRequest:
    return env.request(env.release("2.0.0"), url=f"http://127.0.0.1:{server.port}/pkg")


def server_from_another_ca(env, server) -> UpdateRequest:
    other = TestPKI(env.work / "other-pki")
    env.cfg = update_config(env.work, env.pki, ca_file=str(other.ca_file))
    rel = env.release("2.0.0")
    server.package = (rel / "package").read_bytes()
    return env.request(rel, url=server.url("/pkg"))


def not_enough_space(env, server) -> UpdateRequest:
    env.reconfigure(min_free_bytes="1000000GiB")
    return env.request(env.release("2.0.0"))


def missing_trusted_keys(env, server) -> UpdateRequest:
    os.unlink(env.work / "keys" / "update.pub")
    return env.request(env.release("2.0.0"))


def key_removed_from_trusted_file(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    (env.work / "keys" / "update.pub").write_bytes(public_pem(new_ed25519()))
    return env.request(rel)


def missing_local_file(env, server) -> UpdateRequest:
    rel = env.release("2.0.0")
    os.unlink(rel / "package")
    return env.request(rel)


CASES: list[tuple[Callable[..., UpdateRequest], type[Exception], str]] = [
    (flipped_byte, E.HashMismatchError, "D4002"),
    (unknown_key, E.BadSignatureError, "D4002"),
    (truncated_signature, E.BadSignatureError, "D4002"),
    (truncated_base64, E.MalformedSignatureError, "D4002"),
    (non_base64_signature, E.MalformedSignatureError, "D4002"),
    (empty_signature, E.MalformedSignatureError, "D4002"),
    (manifest_edited_after_signing, E.BadSignatureError, "D4002"),
    (agent_manifest_for_daemon, E.ComponentMismatchError, "D4002"),
    (replayed_older_version, E.VersionRollbackError, "D4002"),
    (expired_manifest, E.ExpiredManifestError, "D4002"),
    (manifest_size_larger_than_file, E.LengthMismatchError, "D4002"),
    (local_file_larger_than_manifest, E.DownloadTooLargeError, "D4001"),
    (signed_garbage_manifest, E.MalformedManifestError, "D4002"),
    (server_sends_more_than_size, E.DownloadTooLargeError, "D4001"),
    (endless_download, E.SlowRetrievalError, "D4001"),
    (stalled_download, E.SlowRetrievalError, "D4001"),
    (not_found, E.DownloadFailedError, "D4001"),
    (connection_refused, E.DownloadFailedError, "D4001"),
    (plain_http_url, E.DownloadFailedError, "D4001"),
    (server_from_another_ca, E.DownloadFailedError, "D4001"),
    (not_enough_space, E.InsufficientSpaceError, "D4003"),
    (missing_trusted_keys, E.TrustedKeysError, "D4002"),
    (key_removed_from_trusted_file, E.BadSignatureError, "D4002"),
    (missing_local_file, E.SourceFileError, "D4001"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("make", "error", "code"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_update_is_rejected_and_changes_nothing(env, server, make, error, code) -> None:
    request = make(env, server)
    before = snapshot(env.cfg)
    updater = env.updater()
    with pytest.raises(error) as caught:
        updater._update(request, updater.target(request.component), _result(request), env.progress)
    assert caught.value.code == code
    assert str(caught.value).startswith(code)
    assert snapshot(env.cfg) == before

    result = env.updater().run(request, env.progress)
    assert not result.success and not result.rolled_back
    assert result.error.startswith(code), result.error
    assert env.states[-1][0] == "failed"
    assert snapshot(env.cfg) == before


def _result(request: UpdateRequest) -> Any:
    from daemon_app.update.flow import UpdateResult

    return UpdateResult(component=request.component)


def test_pre_update_veto_fails_with_d4003_and_the_reason(env) -> None:
    class Freeze:
        @hookimpl
        def pre_update(self, request):
            return f"change freeze: no {request['component']} {request['version']} today"

    class Indifferent:
        @hookimpl
        def pre_update(self, request):
            return None

    plugins = Plugins()
    plugins.register(Indifferent(), "indifferent", version="1", source="builtin")
    plugins.register(Freeze(), "freeze", version="1", source="builtin")
    before = snapshot(env.cfg)
    result = env.updater(plugins=plugins).run(env.request(env.release("2.0.0")), env.progress)
    assert result.error.startswith("D4003")
    assert "freeze" in result.error and "change freeze: no agent 2.0.0 today" in result.error
    assert snapshot(env.cfg) == before


def test_second_update_while_one_runs_is_refused_with_who_holds_it(env) -> None:
    request = env.request(env.release("2.0.0"))
    before = snapshot(env.cfg)
    with UpdateLock(str(env.work)).hold("agent", "1.5.0"):
        result = env.updater().run(request, env.progress)
    assert result.error.startswith("D4003 another update is in progress")
    assert "component agent, version 1.5.0" in result.error and "since" in result.error
    assert snapshot(env.cfg) == before


def test_same_version_again_is_a_successful_no_op(env) -> None:
    before = snapshot(env.cfg)
    result = env.updater().run(env.request(env.release("1.0.0")), env.progress)
    assert result.success and not result.error
    assert "already installed" in result.message
    assert snapshot(env.cfg) == before


def test_good_update_over_mutual_tls_installs_and_raises_the_floor(env, server) -> None:
    rel = env.release("2.0.0")
    server.package = (rel / "package").read_bytes()
    result = env.updater().run(env.request(rel, url=server.url("/pkg")), env.progress)
    assert result.success, result.error
    assert (result.old_version, result.new_version) == ("1.0.0", "2.0.0")
    agent = env.work / "bin" / "agent"
    assert agent.read_bytes() == server.package
    assert os.stat(agent).st_mode & 0o777 == 0o755
    from daemon_app.update.state import UpdateState

    assert UpdateState(str(env.work)).floor("agent") == "2.0.0"
    assert os.listdir(env.cfg.update.download_dir) == []
    assert [s[0] for s in env.states if s[0] != "downloading"][-1] == "completed"
    assert "downloading" in {s[0] for s in env.states}
    assert sorted(os.listdir(env.work / "bin")) == ["agent"]
    assert os.stat(env.cfg.update.download_dir).st_mode & 0o777 == 0o700


def test_every_pre_update_plugin_is_asked_and_every_veto_is_reported(env, caplog) -> None:
    asked = []

    class Freeze:
        @hookimpl(trylast=True)
        def pre_update(self, request):
            asked.append("freeze")
            return "change freeze"

    class Terse:  # takes none of the arguments, as pluggy allows
        @hookimpl
        def pre_update(self):
            asked.append("terse")
            return "not on Fridays"

    class Broken:
        @hookimpl(tryfirst=True)
        def pre_update(self, request):
            asked.append("broken")
            raise KeyError("oops")

    plugins = Plugins()
    plugins.register(Freeze(), "freeze", version="1", source="builtin")
    plugins.register(Terse(), "terse", version="1", source="builtin")
    plugins.register(Broken(), "broken", version="1", source="builtin")
    before = snapshot(env.cfg)
    with caplog.at_level(logging.ERROR):
        result = env.updater(plugins=plugins).run(env.request(env.release("2.0.0")), env.progress)
    assert asked == ["broken", "terse", "freeze"]
    assert result.error == ("D4003 update vetoed by plugin 'terse': not on Fridays; "
                            "by plugin 'freeze': change freeze")
    assert any(r.code == "D5001" and r.plugin == "broken" for r in caplog.records)
    assert snapshot(env.cfg) == before
