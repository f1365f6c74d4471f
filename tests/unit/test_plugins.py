"""Plugin manager: built-ins, the plugin directory (loose *.py and pip --target packages), isolation."""

from __future__ import annotations

import logging
import os
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


def test_the_traceback_of_a_plugin_that_raises_or_fails_to_load_is_logged_at_debug(tmp_path, plugin_dir,
                                                                                   caplog):
    class Bad:
        @plugins.hookspecs.hookimpl
        def on_agent_event(self, event):
            raise KeyError("pid")

    loaded = plugins.Plugins()
    loaded.register(Bad(), "bad", version="1", source="builtin")
    with caplog.at_level(logging.DEBUG, logger="daemon_app.plugins"):
        loaded.call_each("on_agent_event", event={})
    error, debug = caplog.records
    assert error.levelno == logging.ERROR and error.exc_info is None
    assert debug.levelno == logging.DEBUG
    assert debug.getMessage() == "plugin bad raised in on_agent_event here:"
    assert debug.exc_info[0] is KeyError
    caplog.clear()
    write(plugin_dir / "broken.py", "import no_such_module_here\n")
    with caplog.at_level(logging.DEBUG, logger="daemon_app.plugins"):
        plugins.load_all(cfg_for(tmp_path, plugin_dir))
    traced = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert [r.plugin for r in traced] == ["broken"] and traced[0].exc_info[0] is ModuleNotFoundError


def fake_install(plugin_dir, project: str, version: str, files: dict[str, str], record_extra=()) -> None:
    """What `pip install --target` leaves: the files, and a dist-info whose RECORD lists them."""
    for rel, body in files.items():
        (plugin_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (plugin_dir / rel).write_text(body)
    info = plugin_dir / f"{project.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
    write(info / "entry_points.txt", f"[daemon_app.plugins]\n{project.split('-')[-1]} = tp_{project[-1]}\n")
    rows = [*files, *record_extra, f"{info.name}/METADATA", f"{info.name}/entry_points.txt",
            f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{row},,\n" for row in rows))


def test_uninstall_removes_exactly_what_the_record_lists_and_never_leaves_the_plugin_dir(tmp_path,
                                                                                           plugin_dir):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (plugin_dir / "link").symlink_to(tmp_path)  # a RECORD row through a symlink still points outside
    fake_install(plugin_dir, "tp-x", "1.0", {"tp_x/__init__.py": "", "tp_x/data/a.json": "{}"},
                 record_extra=("../precious.txt", str(outside), "../../etc/passwd", "link/precious.txt"))
    (plugin_dir / "tp_x" / "__pycache__").mkdir()
    (plugin_dir / "tp_x" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"")
    fake_install(plugin_dir, "tp-y", "2.0", {"tp_y/__init__.py": ""})
    removed = plugins.uninstall(str(plugin_dir), "x")  # by its plugin (entry point) name
    assert removed and outside.read_text() == "keep me"
    assert sorted(p.name for p in plugin_dir.iterdir()) == ["link", "tp_y", "tp_y-2.0.dist-info"]
    assert plugins.uninstall(str(plugin_dir), "TP_Y")  # by its project name, normalised
    assert sorted(p.name for p in plugin_dir.iterdir()) == ["link"]


def test_uninstall_of_something_not_there_is_a_d5001_error_and_changes_nothing(tmp_path, plugin_dir):
    victim = tmp_path / "victim.py"
    victim.write_text("x = 1\n")
    write(plugin_dir / "_private.py", "")
    for name in ("nothing", "../victim", "_private", str(victim)[:-3]):
        with pytest.raises(plugins.PluginNotInstalled, match=r"^D5001 plugins uninstall: nothing named"):
            plugins.uninstall(str(plugin_dir), name)
    assert victim.exists() and (plugin_dir / "_private.py").exists()


def test_an_upgrade_leaves_only_the_new_versions_dist_info_and_files(tmp_path, plugin_dir):
    fake_install(plugin_dir, "tp-x", "1.0", {"tp_x/__init__.py": "", "tp_x_old.py": ""})
    fake_install(plugin_dir, "tp-y", "1.0", {"tp_y/__init__.py": ""})
    before = plugins.dist_info_dirs(str(plugin_dir))
    assert plugins.prune_upgraded(str(plugin_dir), before) == []  # pip changed nothing
    fake_install(plugin_dir, "tp-x", "1.1", {"tp_x/__init__.py": "# new\n"})
    removed = plugins.prune_upgraded(str(plugin_dir), before)
    assert {os.path.basename(p) for p in removed} == {"tp_x-1.0.dist-info", "tp_x_old.py"}
    assert sorted(p.name for p in plugin_dir.iterdir()) == ["tp_x", "tp_x-1.1.dist-info", "tp_y",
                                                             "tp_y-1.0.dist-info"]
    assert (plugin_dir / "tp_x" / "__init__.py").read_text() == "# new\n"
