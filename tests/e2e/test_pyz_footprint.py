"""What the built pyz keeps out of the daemon's memory: OpenSSL via shiv's bootstrap, run-time compiling."""

from __future__ import annotations

import sys
import zipfile

import pytest

pytestmark = pytest.mark.pyz_smoke

PROBE = """
import sys
maps = open("/proc/self/maps").read()
assert "libcrypto" not in maps and "_hashlib" not in sys.modules and "hashlib" not in sys.modules, maps
import hashlib
print(type(hashlib.sha256()).__module__, hashlib.sha256(b"abc").hexdigest()[:8])
"""


def test_the_bootstrap_leaves_openssl_unloaded_and_hashlib_still_uses_it_later(run_pyz):
    out = run_pyz("-c", PROBE, env={"SHIV_INTERPRETER": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["_hashlib", "ba7816bf"]  # OpenSSL's HASH type, SHA-256 of "abc"


def test_the_pyz_compiles_its_modules_when_it_is_extracted(pyz, run_pyz, shiv_root):
    with zipfile.ZipFile(pyz) as zf:
        assert b'"compile_pyc": true' in zf.read("environment.json")
    assert run_pyz("version").returncode == 0
    assert list(shiv_root.glob("daemon.pyz_*/site-packages/grpclib/__pycache__/client.*.pyc"))
    # and this interpreter's own builds, unpacked beside site-packages by build/preamble.py: only its
    own = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert list(shiv_root.glob(f"daemon.pyz_*/_interp/{own}/cffi/__pycache__/api.*.pyc"))
    assert [p.name for p in shiv_root.glob("daemon.pyz_*/_interp/*")] == [own]
