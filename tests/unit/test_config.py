"""Configuration: the shipped reference file, defaults, and every kind of broken file (D1001/D1002)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from daemon_app import config
from daemon_app.config import SCHEMA, Field
from daemon_app.errors import ConfigLoadError, ConfigValidateError
from tests.helpers import ROOT, daemon_cmd

SHIPPED = ROOT / "configs" / "daemon.yaml"


def _leaf_paths(schema: dict, prefix: str = "") -> list[str]:
    out = []
    for key, node in schema.items():
        path = f"{prefix}{key}"
        out += [path] if isinstance(node, Field) else _leaf_paths(node, path + ".")
    return out


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DAEMON_CONFIG"}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run(daemon_cmd(*args), capture_output=True, text=True, env=full_env, cwd=ROOT,
                          timeout=30)


def test_shipped_config_passes_check_and_equals_the_defaults(tmp_path):
    # Only the world can be wrong with the reference file: this host has no /usr/local/bin/agent.
    result = _cli("-c", str(SHIPPED), "config", "check")
    assert result.returncode in (0, 1), result.stderr
    assert all(line.startswith(("D1002 config: agent.binary_path:", "D1002 config: update.public_key_file:"))
               for line in result.stderr.splitlines()), result.stderr
    assert result.stdout.startswith(("config OK: ", "config valid with")) and result.stdout.count("\n") == 1
    assert config.load(SHIPPED).to_yaml_dict() == config.validate({}).to_yaml_dict()


@pytest.mark.parametrize("content", ["", "# nothing here\n", "\n\n   \n"])
def test_an_empty_or_comment_only_file_is_the_defaults(tmp_path, content):
    path = _write(tmp_path, content)
    shown = _cli("-c", path, "config", "show", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == config.validate({}).to_yaml_dict()
    assert config.load(path).source == path


def test_every_relative_state_path_lives_under_work_dir_and_absolute_ones_are_kept(tmp_path):
    cfg = config.validate({"daemon": {"work_dir": str(tmp_path), "log_file": "/var/log/x.log"},
                           "agent": {"socket_path": "run/agent.sock"}})
    assert cfg.daemon.log_file == "/var/log/x.log" and "daemon.log_file" not in cfg.derived
    assert cfg.agent.socket_path == str(tmp_path / "run" / "agent.sock")
    derived = {"daemon.pid_file", "daemon.control_socket", "manager.tls.cert_file", "manager.tls.key_file",
               "manager.tls.ca_file", "agent.work_dir", "agent.config_file", "agent.socket_path",
               "reporters.file.path", "update.download_dir", "update.backup_dir", "update.public_key_file",
               "plugins.dir"}
    assert set(cfg.derived) == derived
    for key in derived:
        section, leaf = key.rsplit(".", 1)
        value = cfg
        for part in section.split("."):
            value = value[part]
        assert value[leaf].startswith(str(tmp_path) + os.sep), key


def test_empty_keeps_its_meaning_none_for_log_and_pid_file_default_for_the_others(tmp_path):
    cfg = config.validate({"daemon": {"work_dir": str(tmp_path), "log_file": "", "pid_file": "",
                                      "control_socket": ""}, "plugins": {"dir": ""}})
    assert cfg.daemon.log_file == "" and cfg.daemon.pid_file == ""
    assert cfg.daemon.control_socket == str(tmp_path / "control.sock")
    assert cfg.plugins.dir == str(tmp_path / "plugins")


def test_a_relative_work_dir_is_made_absolute_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.validate({"daemon": {"work_dir": "state"}})
    assert cfg.daemon.work_dir == str(tmp_path / "state")
    assert cfg.daemon.log_file == str(tmp_path / "state" / "daemon.log")


def test_config_show_marks_the_derived_paths(tmp_path):
    path = _write(tmp_path, f"daemon: {{work_dir: {tmp_path}, pid_file: /run/x.pid}}\n")
    shown = _cli("-c", path, "config", "show")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"  log_file: {tmp_path}/daemon.log  # derived from daemon.work_dir" in lines
    assert "  pid_file: /run/x.pid" in lines
    assert f"    path: {tmp_path}/reports.jsonl  # derived from daemon.work_dir" in lines
    assert f"    ca_file: {tmp_path}/certs/ca.crt  # derived from daemon.work_dir" in lines


def test_shipped_config_lists_every_schema_key():
    raw = yaml.safe_load(SHIPPED.read_text())
    missing = []
    for path in _leaf_paths(SCHEMA):
        node = raw
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(path)
                break
            node = node[part]
    assert not missing, f"configs/daemon.yaml lacks: {missing}"


def test_durations_sizes_and_derived_paths_come_out_typed(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(
        f"daemon: {{work_dir: {tmp_path}, log_max_bytes: 2MiB}}\n"
        "collectors: {cpu: {interval: 500ms}, disk: {mount_timeout: 2m}, loadavg: {interval: 1h}}\n"
        "agent: {socket_mode: '0660'}\n"
    )
    cfg = config.load(path)
    assert cfg.collectors.cpu.interval == 0.5
    assert cfg.collectors.disk.mount_timeout == 120.0
    assert cfg.daemon.log_max_bytes == 2 * 1024 * 1024
    assert cfg.agent.socket_mode == 0o660
    assert cfg.collector("loadavg").interval == 3600.0
    assert cfg.collector("not-configured").interval == 60.0
    assert cfg.plugins.dir == os.path.join(str(tmp_path), "plugins")
    assert cfg.reporters.file.path == os.path.join(str(tmp_path), "reports.jsonl")
    with pytest.raises(AttributeError):
        cfg.daemon.log_level = "debug"


def test_config_show_prints_an_effective_config_that_loads_back_the_same(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("collectors: {loadavg: {interval: 10s}}\nmanager: {address: 'm.example:8443'}\n")
    shown = _cli("-c", str(path), "config", "show")
    assert shown.returncode == 0, shown.stderr
    again = tmp_path / "again.yaml"
    again.write_text(shown.stdout)
    assert config.load(again).to_yaml_dict() == config.load(path).to_yaml_dict()
    as_json = json.loads(_cli("-c", str(path), "config", "show", "--format", "json").stdout)
    assert as_json["collectors"]["loadavg"]["interval"] == "10s"
    assert as_json["manager"]["address"] == "m.example:8443"


def test_daemon_config_env_names_the_file_and_dash_c_wins(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("daemon: {log_level: loud}\n")
    by_env = _cli("config", "check", env={"DAEMON_CONFIG": str(bad)})
    assert by_env.returncode == 2 and "daemon.log_level" in by_env.stderr
    by_flag = _cli("-c", str(SHIPPED), "config", "check", env={"DAEMON_CONFIG": str(bad)})
    assert by_flag.returncode in (0, 1), by_flag.stderr
    assert "daemon.log_level" not in by_flag.stderr


# (file content, or None for a missing file / bytes for raw bytes; code; text every problem line has)
BROKEN = {
    "bad_yaml": ("daemon: [unclosed\n", "D1001", "not valid YAML at line"),
    "missing_file": (None, "D1001", "cannot read"),
    "not_utf8": (b"daemon:\n  id: \xff\xfe\n", "D1001", "not UTF-8"),
    "root_is_a_list": ("- daemon\n- agent\n", "D1002", "<root>: must be a mapping"),
    "unknown_section": ("colectors: {}\n", "D1002", "colectors: unknown key (did you mean 'collectors'?)"),
    "unknown_key": ("daemon: {log_levl: info}\n", "D1002", "daemon.log_levl: unknown key"),
    "section_not_mapping": ("agent: 5\n", "D1002", "agent: must be a mapping"),
    "wrong_type_bool": ("collectors: {cpu: {enabled: 'yes'}}\n", "D1002",
                        "collectors.cpu.enabled: must be true or false"),
    "wrong_type_int": ("agent: {restart: {max_retries: many}}\n", "D1002",
                       "agent.restart.max_retries: must be an integer"),
    "wrong_type_list": ("collectors: {network: {interfaces: eth0}}\n", "D1002",
                        "collectors.network.interfaces: must be a list of strings"),
    "negative_interval": ("collectors: {memory: {interval: -5s}}\n", "D1002",
                          "collectors.memory.interval: must be a duration"),
    "zero_interval": ("collectors: {memory: {interval: 0s}}\n", "D1002",
                      "collectors.memory.interval: must be at least 100ms"),
    "negative_count": ("daemon: {log_backups: -1}\n", "D1002", "daemon.log_backups: must be at least 0"),
    "bad_duration": ("agent: {health_check: {interval: soon}}\n", "D1002",
                     "agent.health_check.interval: must be a duration like 30s, got 'soon'"),
    "bare_number_duration": ("manager: {timeout: 30}\n", "D1002", "manager.timeout: must be a duration"),
    "bad_size": ("manager: {outbox: {max_bytes: lots}}\n", "D1002",
                 "manager.outbox.max_bytes: must be a size"),
    "bad_choice": ("daemon: {log_level: loud}\n", "D1002", "daemon.log_level: must be one of debug"),
    "unquoted_mode": ("agent: {socket_mode: 0600}\n", "D1002", "agent.socket_mode: must be an octal"),
    "bad_address": ("manager: {address: 'no port here'}\n", "D1002", "manager.address: must be host:port"),
    "bad_port": ("manager: {address: 'm.example:70000'}\n", "D1002", "manager.address: port must be"),
    "inconsistent_heartbeat": ("agent: {health_check: {interval: 30s, heartbeat_timeout: 10s}}\n", "D1002",
                               "agent.health_check.heartbeat_timeout: must be longer than"),
    "inconsistent_backoff": ("agent: {restart: {backoff_base: 1m, backoff_max: 10s}}\n", "D1002",
                             "agent.restart.backoff_max: must not be shorter"),
    "plugin_collector_bad": ("collectors: {loadavg: {interval: fast, colour: red}}\n", "D1002",
                             "collectors.loadavg."),
    "duplicate_key": ("daemon:\n  log_level: info\n  log_level: debug\n", "D1002",
                      "log_level: duplicate key at line 3"),
}


def _write(tmp_path, content) -> str:
    path = tmp_path / "daemon.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return str(path)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_is_refused_by_load_with_code_and_key_path(tmp_path, case):
    content, code, text = BROKEN[case]
    path = _write(tmp_path, content)
    error_type = ConfigLoadError if code == "D1001" else ConfigValidateError
    with pytest.raises(error_type) as info:
        config.load(path)
    assert info.value.code == code
    assert str(info.value).startswith(code)
    assert text in str(info.value)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_makes_config_check_exit_2_with_code_and_key_path(tmp_path, case):
    content, code, text = BROKEN[case]
    result = _cli("-c", _write(tmp_path, content), "config", "check")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith(code + " config: ") for line in lines), result.stderr
    assert any(text in line for line in lines), result.stderr


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(tmp_path, (
        "daemon: {log_level: loud, colour: blue}\n"
        "collectors: {cpu: {interval: soon}, disk: {mount_points: /}}\n"
        "agent: {restart: {backoff_base: 1m, backoff_max: 10s}}\n"
    ))
    with pytest.raises(ConfigValidateError) as info:
        config.load(path)
    keys = sorted(p.split(":", 1)[0] for p in info.value.problems)
    assert keys == ["agent.restart.backoff_max", "collectors.cpu.interval", "collectors.disk.mount_points",
                    "daemon.colour", "daemon.log_level"]


def test_a_wrong_key_does_not_also_raise_a_consistency_problem_about_its_default(tmp_path):
    path = _write(tmp_path, "agent: {health_check: {interval: 2m, heartbeat_timeout: soon}}\n")
    with pytest.raises(ConfigValidateError) as info:
        config.load(path)
    assert [p.split(":", 1)[0] for p in info.value.problems] == ["agent.health_check.heartbeat_timeout"]
    assert "must be a duration" in info.value.problems[0]


@pytest.mark.parametrize("text", ["\u0662s", "1\u0660s", "\uff13m", "\u0663MiB", "\U0001d7d1h"])
def test_digits_of_other_scripts_are_not_read_as_numbers(text):
    # str.isdigit-style \d would read an Arabic-Indic 2 (or a fullwidth 3) as 2 (or 3): a value a
    # human reviewing the config cannot see as a number must not become one.
    parse = config.parse_size if text.endswith("MiB") else config.parse_duration
    with pytest.raises(ValueError, match="must be a"):
        parse(text)
    assert config.parse_duration("2s") == 2.0 and config.parse_size("3MiB") == 3 * 1024 * 1024
