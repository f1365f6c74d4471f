"""Plugin manager: built-ins, the plugin directory (loose *.py and pip --target packages), isolation."""

from __future__ import annotations

import logging
import sys
import textwrap

import pytest

from daemon_app import config, plugins


@pytest.fixture
def plugin_dir(tmp_path):
    path = tmp_path / "plugins"
    path.mkdir()
    yield path
    if str(path) in sys.path:
        sys.path.remove(str(path))
    for name in [m for m in sys.modules if m.startswith(("daemon_plugin_", "tp_"))]:
        del sys.modules[name]


def cfg_for(tmp_path, plugin_dir, **plugins_section):
    return config.validate({"daemon": {"work_dir": str(tmp_path)},
                            "plugins": {"dir": str(plugin_dir), **plugins_section}})


def write(path, text):
    path.write_text(textwrap.dedent(text))


def test_builtins_loose_files_and_target_packages_are_listed_with_their_source(tmp_path, plugin_dir, caplog):
    write(plugin_dir / "loose.py", """
        from daemon_app.hookspecs import hookimpl
        from daemon_app.metrics import Metrics
        __version__ = "2.3"

        @hookimpl
        def collect(ctx):
            return Metrics("loose", {"x": 1})

        @hookimpl
        def report(report):
            pass
        """)
    write(plugin_dir / "broken.py", "import no_such_module_here\n")
    write(plugin_dir / "_private.py", "raise SystemExit('never imported')\n")
    # What `pip install --target` leaves behind: the package and its dist-info with entry points.
    (plugin_dir / "tp_pkg").mkdir()
    write(plugin_dir / "tp_pkg" / "__init__.py", """
        from daemon_app.hookspecs import hookimpl

        @hookimpl
        def on_agent_event(event):
            pass
        """)
    info = plugin_dir / "tp_pkg-0.4.dist-info"
    info.mkdir()
    write(info / "METADATA", "Metadata-Version: 2.1\nName: tp-pkg\nVersion: 0.4\n")
    write(info / "entry_points.txt", "[daemon_app.plugins]\ntp = tp_pkg\n")

    with caplog.at_level(logging.ERROR):
        loaded = plugins.load_all(cfg_for(tmp_path, plugin_dir))
    rows = {row["name"]: row for row in loaded.describe()}
    assert {n: rows[n]["source"] for n in ("cpu", "memory", "disk", "network", "file-reporter")} == {
        n: "builtin" for n in ("cpu", "memory", "disk", "network", "file-reporter")}
    assert rows["loose"] == {"name": "loose", "version": "2.3", "source": "directory",
                             "hooks": ["collect", "report"]}
    assert rows["tp"] == {"name": "tp", "version": "0.4", "source": "directory", "hooks": ["on_agent_event"]}
    assert rows["broken"]["error"].startswith("D5001 plugin 'broken'")
    assert "_private" not in rows
    assert [name for name, _ in loaded.implementations("collect")][-1] == "loose"
    assert any(r.code == "D5001" and r.plugin == "broken" for r in caplog.records)


def test_disabled_plugins_are_not_loaded(tmp_path, plugin_dir):
    write(plugin_dir / "loose.py", "from daemon_app.hookspecs import hookimpl\n")
    loaded = plugins.load_all(cfg_for(tmp_path, plugin_dir, disabled=["loose", "disk", "file-reporter"]))
    names = {row["name"] for row in loaded.describe()}
    assert names == {"cpu", "memory", "network"}


def test_a_reporter_that_raises_is_logged_with_its_name_and_the_others_still_run(tmp_path, plugin_dir,
                                                                                  caplog):
    got = []

    class Good:
        @plugins.hookspecs.hookimpl
        def report(self, report):
            got.append(report["n"])

    class Bad:
        @plugins.hookspecs.hookimpl
        def report(self, report):
            raise OSError("disk full")

    loaded = plugins.Plugins()
    loaded.register(Bad(), "bad", version="1", source="builtin")
    loaded.register(Good(), "good", version="1", source="builtin")
    with caplog.at_level(logging.ERROR):
        results = loaded.call_each("report", report={"n": 7})
    assert got == [7] and [name for name, _ in results] == ["good"]
    (record,) = caplog.records
    assert record.plugin == "bad" and record.code == "D2003"
    assert record.getMessage() == "D2003 plugin bad raised in report: OSError: disk full"
