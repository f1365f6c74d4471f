"""Decode what asks for an update or a rollback into a typed request, bounded and checked first.

Two sources: a Manager command (the dict `comm.messages.command_to_dict` makes from the protobuf)
and a control-socket request (JSON from `daemon update` / `daemon rollback`). Whatever arrives, the
result is an `UpdateRequest`, a `RollbackRequest`, or the module's own D-coded error naming the
field: MalformedManifestError (D4002) for a Manager command, ControlError (D1004) for the control
socket. No field is converted before its type and size are checked (`bytes(10**12)` would allocate
a terabyte), and an error quotes at most a short excerpt of a bad value.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from daemon_app.errors import ControlError, DaemonError
from daemon_app.update.errors import MalformedManifestError
from daemon_app.update.flow import UpdateRequest
from daemon_app.update.manifest import COMPONENTS, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES

MAX_ID = 256
MAX_URL = 8192
MAX_PATH = 4096
KINDS = ("update", "rollback")


@dataclass(frozen=True)
class RollbackRequest:
    component: str
    id: str = ""


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, bytes)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Typed, bounded reads from one request; `error` is the D-coded class to raise."""

    def __init__(self, data: Any, what: str, error: type[DaemonError]) -> None:
        if not isinstance(data, dict):
            raise error(f"{what}: must be an object, got {type(data).__name__}")
        self.data, self.what, self.error = data, what, error

    def text(self, key: str, limit: int) -> str:
        value = self.data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(f"{self.what}: {key} must be text, got {_short(value)}")
        if len(value) > limit:
            raise self.error(f"{self.what}: {key} is longer than {limit} characters")
        return value

    def blob(self, key: str, limit: int) -> bytes:
        value = self.data.get(key)
        if value is None:
            return b""
        if isinstance(value, str):
            if len(value) > limit:
                raise self.error(f"{self.what}: {key} is larger than {limit} bytes")
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates
                raise self.error(f"{self.what}: {key} is not valid text") from None
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise self.error(f"{self.what}: {key} must be bytes or text, got {_short(value)}")
        if len(value) > limit:
            raise self.error(f"{self.what}: {key} is larger than {limit} bytes")
        return bytes(value)

    def b64(self, key: str, limit: int) -> bytes:
        text = self.text(key, (limit + 2) // 3 * 4 + 4)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.error(f"{self.what}: {key} must be base64: {exc}") from None

    def component(self) -> str:
        value = self.data.get("component")
        if not isinstance(value, str) or value not in COMPONENTS:
            raise self.error(f"{self.what}: component must be agent or daemon, got {_short(value)}")
        return value


def from_command(command: Any) -> UpdateRequest | RollbackRequest:
    """A Manager command {"id", "type": "update"|"rollback", "component", ...}."""
    f = _Fields(command, "command", MalformedManifestError)
    kind = f.text("type", 32)
    if kind not in KINDS:
        raise f.error(f"command: type must be update or rollback, got {_short(command.get('type'))}")
    command_id = f.text("id", MAX_ID)
    component = f.component()
    if kind == "rollback":
        return RollbackRequest(component, command_id)
    return UpdateRequest(component, f.blob("manifest", MAX_MANIFEST_BYTES),
                         f.blob("manifest_sig", MAX_SIGNATURE_BYTES), url=f.text("url", MAX_URL),
                         id=command_id)


def from_control(args: Any, kind: str, request_id: str) -> UpdateRequest | RollbackRequest:
    """A control-socket request's args for `update` or `rollback`."""
    f = _Fields(args, kind, ControlError)
    component = f.component()
    if kind == "rollback":
        return RollbackRequest(component, request_id)
    return UpdateRequest(component, f.b64("manifest_b64", MAX_MANIFEST_BYTES),
                         f.b64("signature_b64", MAX_SIGNATURE_BYTES), url=f.text("url", MAX_URL),
                         file=f.text("file", MAX_PATH), id=request_id)
