"""The allow-list, value parsing and the overlay that config loading lays over the file."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon_app import config, remote_settings
from daemon_app.config import SCHEMA
from tests.helpers import base_config, write_config

DEFAULT = config.validate({}).remote_config.allowed_keys


@pytest.mark.parametrize("key", ["daemon.report_interval", "daemon.log_level", "daemon.labels",
                                 "collectors.cpu.interval", "collectors.disk.enabled",
                                 "agent.health_check.heartbeat_timeout"])
def test_the_default_allow_list_opens_intervals_flags_level_labels_and_health(key):
    assert remote_settings.settable(key, DEFAULT)


@pytest.mark.parametrize("key", ["agent.binary_path", "agent.args", "plugins.dir", "manager.address",
                                 "manager.tls.key_file", "manager.tls.ca_file", "agent.config_check",
                                 "update.public_key_file", "remote_config.allowed_keys", "daemon.work_dir",
                                 "reporters.file.path", "daemon.log_file", "agent.socket_path"])
def test_code_files_and_trust_are_never_settable_even_with_an_allow_list_of_everything(key):
    assert not remote_settings.settable(key, ["*"])


def test_every_schema_path_or_file_key_is_on_the_never_list():
    paths = [p for p, field in config._path_fields(SCHEMA) if field.under_work_dir]
    assert paths and all(not remote_settings.settable(p, ["*"]) for p in paths)


def test_values_are_json_when_json_else_text():
    assert remote_settings.parse_value("true") is True
    assert remote_settings.parse_value("5") == 5
    assert remote_settings.parse_value('["a"]') == ["a"]
    assert remote_settings.parse_value("30s") == "30s"
    assert remote_settings.parse_value("[" * 1024) == "[" * 1024  # too deep for json: text, no crash


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=1024))
def test_any_value_text_parses_without_raising(text):
    remote_settings.parse_value(text)


def test_merged_sets_dotted_keys_without_touching_the_files_document():
    raw = {"daemon": {"report_interval": "60s"}}
    out = remote_settings.merged(raw, {"daemon.report_interval": "5s", "collectors.cpu.enabled": False})
    assert out == {"daemon": {"report_interval": "5s"}, "collectors": {"cpu": {"enabled": False}}}
    assert raw == {"daemon": {"report_interval": "60s"}}


def test_load_lays_the_overlay_over_the_file_only_while_remote_config_is_on(tmp_path):
    work = tmp_path / "w"
    path = write_config(tmp_path / "d.yaml", base_config(work, remote_config={"enabled": True}))
    remote_settings.write(str(work), {"daemon.report_interval": "5s"})
    assert stat_mode(remote_settings.path(str(work))) == 0o600
    assert config.load(path).daemon.report_interval == 5.0
    off = write_config(tmp_path / "off.yaml", base_config(work, remote_config={"enabled": False}))
    assert config.load(off).daemon.report_interval == 60.0


def test_an_invalid_overlay_is_logged_and_the_file_alone_applies(tmp_path, caplog):
    work = tmp_path / "w"
    path = write_config(tmp_path / "d.yaml", base_config(work, remote_config={"enabled": True}))
    remote_settings.write(str(work), {"daemon.report_interval": "soon"})
    assert config.load(path).daemon.report_interval == 60.0
    assert any("D1002 remote settings ignored" in r.getMessage() for r in caplog.records)


def test_an_overlay_that_is_a_symlink_is_ignored_with_d6001(tmp_path, caplog):
    work = tmp_path / "w"
    path = write_config(tmp_path / "d.yaml", base_config(work, remote_config={"enabled": True}))
    remote_settings.write(str(work), {})
    planted = tmp_path / "planted.json"
    planted.write_text('{"values": {"daemon.report_interval": "1s"}}')
    os.symlink(planted, remote_settings.path(str(work)))
    assert config.load(path).daemon.report_interval == 60.0
    assert any("D6001" in r.getMessage() for r in caplog.records)


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def test_the_last_known_good_settings_are_kept_0600_and_read_back_even_when_empty(tmp_path):
    work = str(tmp_path)
    assert remote_settings.last_known_good(work) is None
    remote_settings.keep_last_known_good(work, {})
    assert remote_settings.last_known_good(work) == {}
    remote_settings.keep_last_known_good(work, {"daemon.report_interval": "30s"})
    assert remote_settings.last_known_good(work) == {"daemon.report_interval": "30s"}
    kept = os.path.join(work, remote_settings.LAST_KNOWN_GOOD_FILE)
    assert os.stat(kept).st_mode & 0o777 == 0o600


def test_a_symlink_planted_at_the_last_known_good_is_not_followed(tmp_path):
    work = tmp_path / "work"
    remote_settings.keep_last_known_good(str(work), {"daemon.log_level": "info"})
    victim = tmp_path / "victim.json"
    victim.write_text('{"values": {"daemon.log_level": "debug"}}')
    kept = work / remote_settings.LAST_KNOWN_GOOD_FILE
    kept.unlink()
    kept.symlink_to(victim)
    assert remote_settings.last_known_good(str(work)) is None  # refused (logged D6001), not read
    remote_settings.keep_last_known_good(str(work), {"daemon.log_level": "warning"})
    assert victim.read_text() == '{"values": {"daemon.log_level": "debug"}}'
    assert not kept.is_symlink()
    assert remote_settings.last_known_good(str(work)) == {"daemon.log_level": "warning"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048) | st.integers(1, 200_000).map(lambda n: b'{"values":' + b"[" * n))
def test_a_last_known_good_file_of_any_content_reads_as_values_or_none_never_an_exception(tmp_path_factory,
                                                                                           raw):
    work = tmp_path_factory.mktemp("lkg")
    remote_settings.keep_last_known_good(str(work), {})
    (work / remote_settings.LAST_KNOWN_GOOD_FILE).write_bytes(raw)
    got = remote_settings.last_known_good(str(work))
    assert got is None or isinstance(got, dict)


def test_an_overlay_key_the_allow_list_no_longer_opens_is_left_out_at_load_and_logged(tmp_path, caplog):
    """The operator narrows remote_config.allowed_keys to take daemon.log_level back: the Manager's
    setting kept in the overlay must not go on overriding the file (it did: the overlay was only
    checked when it was set)."""
    work = tmp_path / "w"
    path = write_config(tmp_path / "d.yaml", base_config(
        work, daemon={"log_level": "warning"},
        remote_config={"enabled": True, "allowed_keys": ["daemon.report_interval"]}))
    remote_settings.write(str(work), {"daemon.report_interval": "5s", "daemon.log_level": "debug"})
    cfg = config.load(path)
    assert cfg.daemon.report_interval == 5.0, "an allowed key of the overlay still applies"
    assert cfg.daemon.log_level == "warning"
    assert any("D6001" in r.getMessage() and "daemon.log_level" in r.getMessage() for r in caplog.records)


def test_an_overlay_planted_with_keys_never_settable_does_not_apply_them(tmp_path):
    """Whoever wrote settings.json (a restored backup, an older daemon, a hand edit), code, files and
    trust never come from it: the same rule as a push."""
    work = tmp_path / "w"
    path = write_config(tmp_path / "d.yaml", base_config(work, remote_config={"enabled": True,
                                                                             "allowed_keys": ["*"]}))
    remote_settings.write(str(work), {"manager.address": "evil.example:1", "agent.binary_path": "/bin/sh",
                                      "collectors.*.enabled": False, "daemon.report_interval": "5s"})
    cfg = config.load(path)
    assert cfg.manager.address != "evil.example:1" and cfg.agent.binary_path != "/bin/sh"
    assert "*" not in cfg.collectors
    assert cfg.daemon.report_interval == 5.0
