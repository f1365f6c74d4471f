"""ConfigStore on a real filesystem: what it refuses, what it keeps, and the config check's bounds."""

from __future__ import annotations

import os
import stat
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon_app.comm import messages
from daemon_app.errors import RemoteConfigError
from daemon_app.rconfig.store import OUTPUT_EXCERPT, ConfigStore, digest, short


def make(tmp_path) -> ConfigStore:
    return ConfigStore(str(tmp_path / "agent" / "agent.conf"), str(tmp_path / "work"))


def test_install_writes_0600_atomically_and_none_removes_the_file(tmp_path):
    store = make(tmp_path)
    assert store.current() is None
    store.install(b"a: 1\n")
    assert store.current() == b"a: 1\n"
    assert stat.S_IMODE(os.stat(store.config_file).st_mode) == 0o600
    assert [n for n in os.listdir(tmp_path / "agent") if n.endswith(".tmp")] == []
    store.install(None)
    assert store.current() is None


def test_last_known_good_remembers_content_and_absence(tmp_path):
    store = make(tmp_path)
    store.keep_last_known_good(b"old\n")
    assert store.last_known_good() == b"old\n"
    store.keep_last_known_good(None)
    assert store.last_known_good() is None
    assert stat.S_IMODE(os.stat(store.dir).st_mode) == 0o700


def test_a_symlink_at_the_config_file_is_refused_with_d6001_and_its_target_is_untouched(tmp_path):
    store = make(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep\n")
    (tmp_path / "agent").mkdir()
    os.symlink(victim, store.config_file)
    with pytest.raises(RemoteConfigError) as err:
        store.current()
    assert str(err.value).startswith("D6001") and "agent.config_file" in str(err.value)
    store.install(b"new\n")  # the rename replaces the link itself, never writes through it
    assert victim.read_bytes() == b"keep\n"
    assert not os.path.islink(store.config_file) and store.current() == b"new\n"


def test_a_symlinked_remote_config_dir_is_refused(tmp_path):
    store = make(tmp_path)
    (tmp_path / "work").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, store.dir)
    with pytest.raises(RemoteConfigError):
        store.keep_last_known_good(b"x")
    assert os.listdir(elsewhere) == []


def test_a_check_that_prints_megabytes_is_quoted_in_at_most_the_excerpt_and_the_candidate_removed(tmp_path):
    store = make(tmp_path)
    noisy = [sys.executable, "-c", "import sys; sys.stdout.write('x' * 5_000_000); sys.exit(3)"]
    result = store.check(noisy, b"c\n", timeout=30)
    assert not result.ok and result.why == "exit code 3"
    assert len(result.output) <= OUTPUT_EXCERPT + 1
    assert not os.path.exists(store.candidate)


def test_a_check_gets_the_candidate_file_with_the_pushed_bytes(tmp_path):
    store = make(tmp_path)
    echo = [sys.executable, "-c", "import sys; print(open(sys.argv[1]).read().strip())"]
    result = store.check(echo, b"candidate content\n", timeout=30)
    assert result.ok and result.output == "candidate content"


def test_a_check_command_that_does_not_exist_rejects_the_push(tmp_path):
    result = make(tmp_path).check([str(tmp_path / "missing")], b"x", timeout=5)
    assert not result.ok and "cannot run" in result.why


def test_digests_and_their_short_form():
    assert digest(None) == "" and short("") == "(none)"
    assert digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert short(digest(b"")) == "e3b0c44298fc…"


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=4096), st.text(max_size=64))
def test_any_agent_config_command_round_trips_through_the_wire(content, cid):
    cmd = messages.command_from_dict({"id": cid, "type": "agent_config", "content": content})
    d = messages.command_to_dict(type(cmd).FromString(cmd.SerializeToString()))
    assert d == {"id": cid, "type": "agent_config", "content": content}
    assert messages.command_problem(d) == ""
