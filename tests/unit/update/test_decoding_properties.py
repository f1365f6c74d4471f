"""Property-based tests for the update's parsers (DESIGN §9a): any input either parses or raises the
module's own D-coded error, never another exception, and nothing is built past the size bounds.

Covered: the manifest parser (`Manifest.parse`, `parse_rfc3339`, `Version`), the whole manifest
check with a real trusted key (`Updater.check_manifest`), and the decoding of Manager commands
(protobuf bytes -> `comm.messages.command_to_dict` -> `update.commands.from_command`) and of
control-socket requests (`update.commands.from_control`)."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_app.comm import messages
from daemon_app.errors import ControlError, DaemonError
from daemon_app.proto import daemon_pb2 as pb
from daemon_app.update import commands
from daemon_app.update.errors import MalformedManifestError
from daemon_app.update.flow import Updater, UpdateRequest
from daemon_app.update.manifest import MAX_MANIFEST_BYTES, Manifest, format_rfc3339, parse_rfc3339
from daemon_app.update.versions import Version
from daemon_manager.release import sign_bytes
from tests.update_support import manifest_bytes, new_ed25519, public_pem, update_config

VERSION_RE = r"v?\d{1,3}(\.\d{1,3}){0,3}(-[a-z0-9.]{1,8})?"
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**400)),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=20)
plausible = st.fixed_dictionaries(
    {}, optional={"component": st.one_of(st.sampled_from(["agent", "daemon", "Agent", ""]), json_value),
                  "version": st.one_of(st.from_regex(VERSION_RE, fullmatch=True), json_value),
                  "sha256": st.one_of(st.from_regex(r"[0-9a-fA-F]{63,65}", fullmatch=True), json_value),
                  "size": st.one_of(st.integers(min_value=-5), json_value),
                  "expires": st.one_of(st.datetimes().map(lambda d: d.isoformat() + "Z"),
                                       st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d([+-]\d\d:\d\d|Z)?",
                                                     fullmatch=True), json_value)})


def parses_or_d4002(raw: bytes) -> None:
    try:
        manifest = Manifest.parse(raw)
    except MalformedManifestError as exc:
        assert str(exc).startswith("D4002 manifest: ") and len(str(exc)) < 400
        return
    assert manifest.component in ("agent", "daemon") and manifest.size >= 0
    assert Manifest.parse(manifest.to_bytes()) == manifest  # what parses, round-trips


@given(st.binary(max_size=4096))
def test_manifest_parser_takes_any_bytes(raw: bytes) -> None:
    parses_or_d4002(raw)


@given(json_value)
def test_manifest_parser_takes_any_json(value) -> None:
    parses_or_d4002(json.dumps(value).encode())


@given(plausible)
def test_manifest_parser_takes_any_mix_of_right_and_wrong_fields(data) -> None:
    parses_or_d4002(json.dumps(data).encode())


@pytest.mark.parametrize("raw", [b"[" * 60_000, b'{"a":' * 30_000, b"x" * (MAX_MANIFEST_BYTES + 1),
                                 b'{"size": 1' + b"0" * 5000 + b"}", b"\xff\xfe", b'"\\ud800"'])
def test_manifest_parser_refuses_hostile_documents_with_d4002(raw: bytes) -> None:
    with pytest.raises(MalformedManifestError, match="^D4002 manifest: "):
        Manifest.parse(raw)


@given(st.one_of(st.text(max_size=80), json_value))
def test_expiry_parser_takes_any_value(value) -> None:
    try:
        when = parse_rfc3339(value)
    except MalformedManifestError as exc:
        assert str(exc).startswith("D4002 manifest: expires")
    else:
        assert when.utcoffset() is not None


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_expiry_at_the_edge_of_the_calendar_is_d4002_not_overflow(value) -> None:
    with pytest.raises(MalformedManifestError, match="out of range"):
        parse_rfc3339(value)


@given(st.one_of(st.text(max_size=100), json_value))
def test_version_parser_raises_only_value_error(value) -> None:
    try:
        v = Version(value)
    except ValueError:
        return
    assert Version(str(v)) == v


# --- the whole manifest check, with a real key ----------------------------------------------------

KEY = new_ed25519()
WORK = Path(tempfile.mkdtemp(prefix="props"))
(WORK / "keys").mkdir()
(WORK / "keys" / "update.pub").write_bytes(public_pem(KEY))
UPDATER = Updater(update_config(WORK))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(manifest=st.one_of(st.binary(max_size=2048), plausible.map(lambda d: json.dumps(d).encode())),
       sign=st.booleans(), signature=st.binary(max_size=200), component=st.sampled_from(["agent", "daemon"]))
def test_check_manifest_raises_only_d_coded_errors(manifest, sign, signature, component) -> None:
    sig = base64.b64encode(sign_bytes(KEY, manifest)) if sign else signature
    try:
        checked = UPDATER.check_manifest(UpdateRequest(component, manifest, sig))
    except DaemonError as exc:
        assert str(exc).startswith(("D4002 ", "D4003 ")), exc
    else:
        assert sign and checked.component == component


def test_a_signed_valid_manifest_passes_the_same_check() -> None:
    raw = manifest_bytes("agent", "9.9.9", b"pkg")
    assert UPDATER.check_manifest(UpdateRequest("agent", raw, base64.b64encode(sign_bytes(KEY, raw))))


# --- Manager commands and control requests --------------------------------------------------------

any_value = st.one_of(json_value, st.binary(max_size=200), st.integers(min_value=10**9))
command_dicts = st.one_of(json_value, st.dictionaries(
    st.sampled_from(["id", "type", "component", "url", "manifest", "manifest_sig", "file", "other"]),
    st.one_of(any_value, st.sampled_from(["update", "rollback", "agent", "daemon"])), max_size=8))


@given(command_dicts)
def test_manager_command_decodes_or_raises_d4002(command) -> None:
    try:
        request = commands.from_command(command)
    except MalformedManifestError as exc:
        assert str(exc).startswith("D4002 command: ") and len(str(exc)) < 300
        return
    assert request.component in ("agent", "daemon")
    if isinstance(request, UpdateRequest):
        assert len(request.manifest) <= MAX_MANIFEST_BYTES


@given(st.binary(max_size=2048))
def test_command_bytes_from_the_wire_decode_or_raise_d4002(raw: bytes) -> None:
    try:
        cmd = pb.Command.FromString(raw)
    except DecodeError:
        return  # the link drops what is not a Command at all
    try:
        commands.from_command(messages.command_to_dict(cmd))
    except MalformedManifestError:
        pass


@given(st.builds(pb.UpdateCommand, component=st.text(max_size=10), url=st.text(max_size=50),
                 manifest=st.binary(max_size=300), manifest_sig=st.binary(max_size=100)),
       st.text(max_size=20))
def test_update_commands_built_by_a_manager_decode_or_raise_d4002(update, cid) -> None:
    d = messages.command_to_dict(pb.Command(id=cid, update=update))
    try:
        request = commands.from_command(d)
    except MalformedManifestError:
        assert update.component not in ("agent", "daemon")
        return
    assert isinstance(request, UpdateRequest) and request.manifest == update.manifest


def test_a_command_asking_for_a_terabyte_is_refused_before_anything_is_allocated() -> None:
    for field in ("manifest", "manifest_sig"):
        with pytest.raises(MalformedManifestError, match=f"{field} must be bytes or text"):
            commands.from_command({"type": "update", "component": "agent", field: 10**12})
    with pytest.raises(MalformedManifestError, match="manifest is larger than"):
        commands.from_command({"type": "update", "component": "agent", "manifest": b"x" * (1 << 20)})


@given(st.one_of(json_value, st.dictionaries(
    st.sampled_from(["component", "manifest_b64", "signature_b64", "url", "file"]),
    st.one_of(json_value, st.sampled_from(["agent", "daemon", "AAAA", "!!"])), max_size=5)),
    st.sampled_from(["update", "rollback"]))
def test_control_requests_decode_or_raise_d1004(args, kind) -> None:
    try:
        request = commands.from_control(args, kind, "local-1")
    except ControlError as exc:
        assert str(exc).startswith(f"D1004 {kind}: ")
        return
    assert request.component in ("agent", "daemon") and request.id == "local-1"


@pytest.mark.parametrize("raw", [
    b'{"component": "agent", "version": "1.0.0", "version": "9.0.0", "sha256": "' + b"a" * 64
    + b'", "size": 1, "expires": "2099-01-01T00:00:00Z"}',
    b'{"component": "agent", "version": "1.0.0", "sha256": "' + b"a" * 64
    + b'", "size": NaN, "expires": "2099-01-01T00:00:00Z"}',
])
def test_manifest_with_duplicate_keys_or_non_json_constants_is_d4002(raw: bytes) -> None:
    with pytest.raises(MalformedManifestError, match="^D4002 manifest: not a JSON document: "):
        Manifest.parse(raw)


def test_an_expiry_with_fractions_of_a_second_round_trips() -> None:
    when = parse_rfc3339("2030-01-02T03:04:05.250000Z")
    assert parse_rfc3339(format_rfc3339(when)) == when
    assert format_rfc3339(parse_rfc3339("2030-01-02T03:04:05Z")) == "2030-01-02T03:04:05Z"
