"""The committed generated code must match proto/daemon.proto (run `make proto` when this fails)."""

from __future__ import annotations

import pytest

from daemon_app.proto import generate


def test_committed_generated_code_is_not_stale(tmp_path):
    pytest.importorskip("grpc_tools")
    generate.generate(tmp_path)
    for name in generate.GENERATED:
        fresh = (tmp_path / name).read_text()
        committed = (generate.OUT_DIR / name).read_text()
        assert fresh == committed, f"daemon_app/proto/{name} is stale: run `make proto` and commit"


def test_generated_grpc_module_imports_the_package_relative_pb2():
    text = (generate.OUT_DIR / "daemon_pb2_grpc.py").read_text()
    assert "from daemon_app.proto import daemon_pb2 as daemon__pb2" in text
