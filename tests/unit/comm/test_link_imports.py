"""The Manager link's imports: grpc and asyncio come without the ssl module, which stays importable."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT

PROBE = """
import sys
from daemon_app.comm.link import _import_grpc
grpc = _import_grpc()
assert "asyncio" in sys.modules and "ssl" not in sys.modules, sorted(m for m in sys.modules if "ssl" in m)
import asyncio
loop = asyncio.new_event_loop()
loop.run_until_complete(asyncio.sleep(0))
loop.close()
import ssl
print(ssl.OPENSSL_VERSION.split()[0])
"""


def test_grpc_loads_without_ssl_and_ssl_still_imports_later():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OpenSSL"
