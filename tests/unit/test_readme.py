"""The README stands on its own: the stand-alone trial it shows is the one the e2e tests run, and
it carries what a new user needs (where daemon-manager is, the package index, the budgets)."""

from __future__ import annotations

import re
import subprocess

from tests.helpers import ROOT, daemon_cmd

README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def test_the_stand_alone_trial_is_one_work_dir_key_and_valid(tmp_path):
    trial = next(b for b in shell_blocks() if "work_dir" in b and " run &" in b)
    written = re.search(r"printf '([^']*)' > /tmp/try/daemon.yaml", trial)
    assert written, trial
    text = written.group(1).replace("\\n", "\n").replace("/tmp/try", str(tmp_path))
    assert text == f"daemon:\n  work_dir: {tmp_path}/work\n"
    (tmp_path / "daemon.yaml").write_text(text)
    shown = subprocess.run(daemon_cmd("-c", str(tmp_path / "daemon.yaml"), "config", "show"),
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    paths = re.findall(r"^\s+\w+: (/\S+)", shown.stdout, re.M)
    assert paths and all(p.startswith(str(tmp_path)) or p.startswith("/usr/local/bin/agent")
                         for p in paths), paths
    assert "python3 dist/daemon.pyz status " in trial  # without -c


def test_it_says_where_daemon_manager_lives_and_that_make_venv_needs_an_index():
    assert ".venv/bin/daemon-manager" in README
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in README
    assert "package index" in README


def test_it_carries_the_budgets_instead_of_citing_a_file_not_in_the_repository():
    assert "DESIGN.md" not in README and not (ROOT / "DESIGN.md").exists()
    for row in ("| idle CPU | < 1 % | ≤ 0.1 % |",
                "| one collection round, all built-ins | < 500 ms | ≤ 5 ms |",
                "| Agent crash -> new Agent started | 30 s tick | ≤ 100 ms |",
                "| self-update, command -> re-registered | — | ≤ 2 s, 0 reports lost |"):
        assert row in README, row
    for doc in re.findall(r"\]\(([^)#]+)\)", README):
        if not doc.startswith("http"):
            assert (ROOT / doc).exists(), doc
