"""dist/daemon-aarch64.pyz run by Debian 13's aarch64 python3 under qemu-user emulation.

The root is Debian 13 arm64 (tests/compat/rootfs.py: unpacked with `debootstrap --foreign`), run
with chroot and qemu-aarch64-static called explicitly, so python3 and every extension module it
loads (psutil, cryptography, cffi, protobuf: aarch64 builds) are really executed as aarch64 code.
Emulation is slow (the first start unpacks and compiles the pyz: minutes), so this runs what
spawns no other program: version, config check, collect --once, an import of every module.
`make compat` runs it (DAEMON_COMPAT=1, root, debootstrap, qemu-user-static).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.compat import rootfs
from tests.helpers import ROOT, base_config, write_config

pytestmark = pytest.mark.compat

PYZ = ROOT / "dist" / "daemon-aarch64.pyz"
SUITE, ARCH = "trixie", "aarch64"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"  # found on our PATH: the child gets a clean one
# Run inside the pyz: each binary dependency does real work as aarch64 code.
NATIVE = """
import platform, _cffi_backend, psutil
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.internal import api_implementation
key = ed25519.Ed25519PrivateKey.generate()
key.public_key().verify(key.sign(b"manifest"), b"manifest")
print(platform.machine(), psutil.cpu_count() > 0, api_implementation.Type(), _cffi_backend.__version__)
"""


@pytest.fixture(scope="module")
def emulated():
    if os.environ.get("DAEMON_COMPAT") != "1":
        pytest.skip("the Debian root filesystem tests run under `make compat` (DAEMON_COMPAT=1)")
    if not PYZ.exists():
        pytest.fail("dist/daemon-aarch64.pyz is missing: `make pyz` first (make compat does)")
    root = rootfs.ensure(SUITE, ARCH)
    place = f"/tmp/daemon-compat-{uuid.uuid4().hex[:8]}"
    host = root / place.lstrip("/")
    host.mkdir(parents=True)
    shutil.copyfile(PYZ, host / "daemon.pyz")
    shutil.copyfile(Path(__file__).with_name("import_all.py"), host / "import_all.py")
    (host / "native.py").write_text(NATIVE)
    cfg = base_config(place)
    cfg["daemon"]["control_socket"] = f"{place}/control.sock"
    write_config(host / "daemon.yaml", cfg)
    with rootfs.mounted(root):
        def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
            clean = {"HOME": "/root", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                     "SHIV_ROOT": f"{place}/shiv", **env}
            return subprocess.run([CHROOT, str(root), f"/usr/bin/{rootfs.qemu_binary(ARCH).name}",
                                   "/usr/bin/python3", *args], capture_output=True, text=True, env=clean,
                                  timeout=900)
        yield run, place
    shutil.rmtree(host, ignore_errors=True)


@pytest.mark.timeout(1200)
def test_the_aarch64_pyz_runs_version_config_check_and_collect_on_aarch64_python(emulated):
    run, place = emulated
    version = run(f"{place}/daemon.pyz", "version", "--format", "json")  # first start: unpacks
    assert version.returncode == 0, version.stderr
    info = json.loads(version.stdout)
    assert info["arch"] == "aarch64" and info["python"].startswith("3.13.")
    check = run(f"{place}/daemon.pyz", "-c", f"{place}/daemon.yaml", "config", "check")
    # exit 1 "valid with warnings" where the config check warns about the missing update key
    assert check.returncode in (0, 1) and check.stdout.startswith(("config OK", "config valid with")), \
        check.stdout + check.stderr
    collected = run(f"{place}/daemon.pyz", "-c", f"{place}/daemon.yaml", "collect", "--once",
                    "--format", "json")
    assert collected.returncode == 0, collected.stderr
    data = json.loads(collected.stdout)
    assert set(data) == {"cpu", "memory", "disk", "network"} and data["memory"]["values"]["total"] > 0


@pytest.mark.timeout(1200)
def test_every_daemon_app_module_imports_on_aarch64_python(emulated):
    run, place = emulated
    result = run(f"{place}/daemon.pyz", f"{place}/import_all.py", SHIV_INTERPRETER="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imported" in result.stdout and "on Python 3.13." in result.stdout
    native = run(f"{place}/daemon.pyz", f"{place}/native.py", SHIV_INTERPRETER="1")
    assert native.returncode == 0, native.stderr
    machine, cpus, protobuf, _cffi = native.stdout.split()
    assert (machine, cpus, protobuf) == ("aarch64", "True", "upb")
