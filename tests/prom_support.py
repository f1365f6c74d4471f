"""Test support for the Prometheus exposition: a strict text-format reader, and the real Prometheus
server, node_exporter and promtool (Debian packages `prometheus`, `prometheus-node-exporter`)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}

Sample = tuple[str, tuple[tuple[str, str], ...]]


def parse_exposition(text: str) -> dict[Sample, float]:
    """Prometheus text format 0.0.4 -> {(name, sorted labels): value}; raises ValueError on anything
    malformed (a duplicate series, a sample without its TYPE, a bad escape...)."""
    out: dict[Sample, float] = {}
    typed: set[str] = set()
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if parts[1:2] == ["TYPE"]:
                if parts[3] not in ("counter", "gauge", "untyped", "summary", "histogram"):
                    raise ValueError(f"line {number}: bad TYPE {parts[3]!r}")
                typed.add(parts[2])
            continue
        m = _NAME.match(line)
        if not m:
            raise ValueError(f"line {number}: bad metric name: {line!r}")
        name, pos = m.group(), m.end()
        labels: list[tuple[str, str]] = []
        if line[pos:pos + 1] == "{":
            pos += 1
            while line[pos] != "}":
                lm = _LABEL.match(line, pos)
                if not lm or line[lm.end():lm.end() + 2] != '="':
                    raise ValueError(f"line {number}: bad label at {pos}: {line!r}")
                pos = lm.end() + 2
                value = []
                while line[pos] != '"':
                    if line[pos] == "\\":
                        value.append(_ESCAPES[line[pos + 1]])
                        pos += 2
                    else:
                        value.append(line[pos])
                        pos += 1
                labels.append((lm.group(), "".join(value)))
                pos += 1
                if line[pos] == ",":
                    pos += 1
            pos += 1
        fields = line[pos:].split()
        if not fields or len(fields) > 2:
            raise ValueError(f"line {number}: bad value: {line!r}")
        value = float(fields[0].replace("+Inf", "inf").replace("-Inf", "-inf"))
        key = (name, tuple(sorted(labels)))
        if key in out:
            raise ValueError(f"line {number}: duplicate series {key}")
        if name not in typed and re.sub(r"_(sum|count|bucket)$", "", name) not in typed:
            raise ValueError(f"line {number}: {name} has no TYPE line before it")
        out[key] = value if not math.isnan(value) else float("nan")
    return out


def by_name(samples: dict[Sample, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (Debian package {package}; .ci/run installs it)")
    return path


def fetch(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def listening_port(pid: int) -> int | None:
    """The TCP port `pid` listens on (it was started with port 0), or None while it has none."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return None
    ports = [c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN]
    return min(ports) if ports else None


class Binary:
    """A Go binary started by a test; stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT)

    def port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args[0]} exited {self.proc.returncode}: "
                                     f"{self.log.read_text()[-2000:]}")
            port = listening_port(self.proc.pid)
            if port:
                return port
            time.sleep(0.05)
        raise AssertionError(f"{self.proc.args[0]} did not listen within {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()


def start_node_exporter(tmp: Path) -> Binary:
    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    return Binary([binary, "--web.listen-address=127.0.0.1:0"], tmp / "node_exporter.log")


def start_prometheus(tmp: Path, target: str) -> Binary:
    binary = need("prometheus", "prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "daemon", "static_configs": [{"targets": [target]}]}],
    }))
    return Binary([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                   "--web.listen-address=127.0.0.1:0", "--log.level=warn"], tmp / "prometheus.log")


def prometheus_query(port: int, query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    body = json.loads(fetch(url))
    assert body["status"] == "success", body
    return body["data"]["result"]


def promtool_check(text: str) -> tuple[int, list[str]]:
    """`promtool check metrics` on `text`: (exit code, problem lines)."""
    binary = need("promtool", "prometheus")
    out = subprocess.run([binary, "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "NO_COLOR": "1"})
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return out.returncode, lines


def meminfo_bytes(field: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)
