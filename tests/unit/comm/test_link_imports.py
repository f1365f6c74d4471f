"""The daemon's runtime never imports grpcio: the link is grpclib, grpcio serves only the Manager; and
grpclib's multidict runs as pure Python, so no CPython-specific binary is on the link's path."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT

PROBE = """
import pkgutil, sys
import daemon_app
skip = {"daemon_app.proto.daemon_pb2_grpc", "daemon_app.proto.generate"}  # the Manager's / make proto's
for mod in pkgutil.walk_packages(daemon_app.__path__, "daemon_app."):
    if mod.name not in skip:
        __import__(mod.name)
from daemon_app.comm import failures, link, rpc
failures.call_errors()
link.keepalive_config(type("M", (), {"keepalive_time": 60.0, "keepalive_timeout": 3.0, "server_name": ""})())
print(sorted(m for m in sys.modules if m == "grpc" or m.startswith(("grpc.", "grpc_"))))
print("grpclib" in sys.modules)
import multidict
print(multidict.MultiDict.__module__)
"""


def test_every_daemon_module_imports_without_grpcio():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # grpclib is loaded, grpcio is not, and multidict is its pure-Python self (no per-CPython binary).
    assert out.stdout.split("\n")[:3] == ["[]", "True", "multidict._multidict_py"]
