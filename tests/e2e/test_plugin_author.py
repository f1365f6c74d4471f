"""docs/plugins.md, followed by a plugin author with the built pyz: the example package is taken from
the guide itself, then tried loose, installed, tested with collect --once, shipped as a wheel,
upgraded and uninstalled."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, short_tmpdir

pytestmark = pytest.mark.pyz_smoke

GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLE = "daemon-plugin-filenr"


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(short_tmpdir("pa"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def files_from_the_guide() -> dict[str, str]:
    """Each fenced block whose first line is `# daemon-plugin-filenr/<path>` is that file."""
    blocks = re.findall(r"```\w*\n# (" + EXAMPLE + r"/\S+)\n(.*?)```", GUIDE.read_text(), re.S)
    return {name: body for name, body in blocks}


class Operator:
    """Runs `python3 daemon.pyz -c CONFIG ...` the way the guide writes it, HOME in the scratch dir."""

    def __init__(self, pyz: Path, scratch: Path, config: Path) -> None:
        self.pyz, self.scratch, self.config = pyz, scratch, config

    def __call__(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAEMON_", "SHIV_"))}
        env["HOME"] = str(self.scratch)
        return subprocess.run([sys.executable, str(self.pyz), "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=self.scratch)

    def listed(self) -> dict[str, dict]:
        result = self("plugins", "list", "--format", "json")
        assert result.returncode == 0, result.stderr
        return {row["name"]: row for row in json.loads(result.stdout)}


def kernel_file_nr() -> list[int]:
    return [int(f) for f in Path("/proc/sys/fs/file-nr").read_text().split()]


def test_the_guide_carries_a_complete_example_package():
    files = files_from_the_guide()
    assert set(files) == {f"{EXAMPLE}/pyproject.toml", f"{EXAMPLE}/daemon_plugin_filenr/__init__.py"}
    assert '[project.entry-points."daemon_app.plugins"]' in files[f"{EXAMPLE}/pyproject.toml"]


@pytest.mark.timeout(600)
def test_write_try_install_test_ship_upgrade_and_uninstall_the_guides_plugin(pyz, scratch):
    src = scratch / "src"
    for name, body in files_from_the_guide().items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(body)
    package = src / EXAMPLE
    work = scratch / "work"
    config = scratch / "daemon.yaml"
    config.write_text(f"daemon:\n  work_dir: {work}\n")
    op = Operator(pyz, scratch, config)
    plugin_dir = work / "plugins"

    # 1. Try it loose: the module copied into the plugin directory.
    plugin_dir.mkdir(parents=True)
    shutil.copy(package / "daemon_plugin_filenr" / "__init__.py", plugin_dir / "filenr.py")
    table = op("collect", "--once", "--format", "table")
    assert table.returncode == 0, table.stderr
    assert re.search(r"^filenr +max +\d+$", table.stdout, re.M), table.stdout
    removed = op("plugins", "uninstall", "filenr")
    assert removed.returncode == 0, removed.stderr
    assert not (plugin_dir / "filenr.py").exists()

    # 2. Install the package and test it with collect --once.
    installed = op("plugins", "install", str(package))
    assert installed.returncode == 0, installed.stderr
    assert f"check it with: daemon.pyz -c {config} plugins list" in installed.stdout
    assert op.listed()["filenr"] == {"name": "filenr", "version": "1.0.0", "source": "directory",
                                     "hooks": ["collect", "on_agent_event"]}
    collected = op("collect", "--once")
    assert collected.returncode == 0, collected.stderr
    values = json.loads(collected.stdout)["filenr"]["values"]
    assert values["max"] == kernel_file_nr()[2]
    assert 0 < values["allocated"] <= values["max"] and 0.0 < values["used_percent"] < 100.0

    # 3. Ship a wheel of the next version and upgrade to it.
    for path in (package / "pyproject.toml", package / "daemon_plugin_filenr" / "__init__.py"):
        path.write_text(path.read_text().replace('"1.0.0"', '"1.1.0"'))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(scratch / "dist"), str(package)],
                           capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr
    wheel = scratch / "dist" / "daemon_plugin_filenr-1.1.0-py3-none-any.whl"
    assert wheel.exists()
    upgraded = op("plugins", "install", str(wheel))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "removed the replaced version's daemon_plugin_filenr-1.0.0.dist-info" in upgraded.stdout
    assert sorted(p.name for p in plugin_dir.glob("*.dist-info")) == ["daemon_plugin_filenr-1.1.0.dist-info"]
    assert op.listed()["filenr"]["version"] == "1.1.0"
    assert list(op.listed()).count("filenr") == 1

    # 4. Remove it: nothing of it is left, and a second uninstall says so.
    gone = op("plugins", "uninstall", "daemon-plugin-filenr")
    assert gone.returncode == 0, gone.stderr
    assert "filenr" not in op.listed()
    assert sorted(p.name for p in plugin_dir.iterdir()) == []
    again = op("plugins", "uninstall", "filenr")
    assert again.returncode == 1
    assert again.stderr.strip() == (f"D5001 plugins uninstall: nothing named 'filenr' is installed in "
                                    f"{plugin_dir}")


@pytest.mark.timeout(120)
def test_a_failing_plugins_traceback_is_shown_at_debug_level_only(pyz, scratch):
    work = scratch / "work"
    (work / "plugins").mkdir(parents=True)
    (work / "plugins" / "broken.py").write_text(
        "from daemon_app.hookspecs import hookimpl\n\n\n"
        "def measure():\n    return 1 / 0\n\n\n"
        "@hookimpl\ndef collect(ctx):\n    return measure()\n")
    config = scratch / "daemon.yaml"
    config.write_text(f"daemon:\n  work_dir: {work}\n")
    op = Operator(pyz, scratch, config)
    plain = op("collect", "--once")
    assert plain.returncode == 1
    assert "D5001 collector broken: raised ZeroDivisionError: division by zero" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = op("collect", "--once", "--debug")
    assert debug.returncode == 1
    # Not a terminal: log records are JSON lines, the traceback in the record's `exception`.
    records = [json.loads(line) for line in debug.stderr.splitlines() if line.startswith("{")]
    traced = [r for r in records if r["message"] == "collector broken raised here:"]
    assert len(traced) == 1 and traced[0]["level"] == "debug"
    assert traced[0]["exception"].startswith("Traceback (most recent call last):")
    assert f'File "{work / "plugins" / "broken.py"}", line 5, in measure' in traced[0]["exception"]
