"""The Prometheus exposition's parts: the text writer and its bounds, the node_exporter mapping,
the daemon_* series, the generic plugin rule, the config check, and what is (not) imported."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from daemon_app import config as config_mod
from daemon_app.errors import ConfigValidateError
from daemon_app.prometheus.exposition import COUNTER, GAUGE, Exposition, sanitize_name
from daemon_app.prometheus.generic import add_plugin_series
from daemon_app.prometheus.health import AGENT_STATES, UPDATE_STATES, add_health_series, unix_time
from daemon_app.prometheus.node import BUILTIN_GROUPS, add_node_series
from daemon_app.prometheus.plugin import PrometheusExporter
from tests.helpers import ROOT
from tests.prom_support import parse_exposition


def render(fill) -> tuple[bytes, Exposition]:
    out = Exposition(1000)
    fill(out)
    return out.render(), out


def test_label_values_are_escaped_and_read_back_unchanged():
    nasty = 'a"b\\c\nd}{,=é'
    body, _ = render(lambda out: out.add("x_bytes", GAUGE, "help with \\ and\nnewline", 1.5,
                                         {"mountpoint": nasty}))
    assert b"# HELP x_bytes help with \\\\ and\\nnewline\n" in body
    samples = parse_exposition(body.decode())
    assert samples == {("x_bytes", (("mountpoint", nasty),)): 1.5}


@pytest.mark.parametrize("name,labels,value", [
    ("1bad", None, 1), ("bad-name", None, 1), ("x" * 201, None, 1),
    ("ok", {"bad-label": "v"}, 1), ("ok", {"__reserved": "v"}, 1), ("ok", {"l": 3}, 1),
    ("ok", {f"l{i}": "v" for i in range(17)}, 1), ("ok", None, "12"), ("ok", None, None),
])
def test_a_bad_name_label_or_value_costs_that_sample_only_and_is_counted(name, labels, value):
    out = Exposition(100)
    assert out.add("good", GAUGE, "h", 1)
    assert not out.add(name, GAUGE, "h", value, labels)
    assert out.dropped == 1 and out.names() == ["good"]
    assert out.render() == b"# HELP good h\n# TYPE good gauge\ngood 1\n"


def test_duplicates_and_kind_conflicts_keep_the_first_sample():
    out = Exposition(100)
    assert out.add("a", GAUGE, "h", 1, {"l": "x"})
    assert not out.add("a", GAUGE, "h", 2, {"l": "x"})
    assert not out.add("a", COUNTER, "h", 3, {"l": "y"})
    assert out.dropped == 2 and b'a{l="x"} 1\n' in out.render()


def test_the_series_limit_holds_and_counts_the_rest():
    out = Exposition(10)
    for i in range(50):
        out.add("s", GAUGE, "h", i, {"i": str(i)})
    assert out.series == 10 and out.dropped == 40
    assert out.render().count(b"\ns{") == 10


def test_special_floats_are_written_as_prometheus_spells_them():
    body, _ = render(lambda out: [out.add("v", GAUGE, "h", x, {"k": str(i)})
                                  for i, x in enumerate((float("nan"), float("inf"), -float("inf"), True))])
    assert body.endswith(b'v{k="0"} NaN\nv{k="1"} +Inf\nv{k="2"} -Inf\nv{k="3"} 1\n')


def test_label_values_are_cut_at_the_limit():
    body, _ = render(lambda out: out.add("v", GAUGE, "h", 1, {"k": "x" * 100_000}))
    assert len(body) < 1000


def test_node_mapping_uses_node_exporter_names_and_labels():
    metrics = {
        "cpu": {"values": {"user": 10.5, "system": 2.0, "idle": 100.0, "usage_percent": 3.0, "cores": 4}},
        "memory": {"values": {"total": 1000, "available": 600, "buffers": 5, "cached": 7,
                              "swap_total": 300, "swap_used": 100}},
        "disk": {"values": {"disks": [{"mountpoint": "/", "device": "/dev/null", "fstype": "ext4",
                                       "total": 100, "used": 40, "free": 50, "read_bytes": 7,
                                       "write_bytes": 9}]}},
        "network": {"values": {"interfaces": [{"interface": "eth0", "bytes_recv": 1, "bytes_sent": 2,
                                               "packets_recv": 3, "packets_sent": 4, "errin": 5,
                                               "errout": 6, "dropin": 7, "dropout": 8}]}},
    }
    body, _ = render(lambda out: add_node_series(out, metrics))
    got = parse_exposition(body.decode())
    fs = (("device", "/dev/null"), ("fstype", "ext4"), ("mountpoint", "/"))
    assert got == {
        ("node_cpu_seconds_total", (("cpu", "all"), ("mode", "user"))): 10.5,
        ("node_cpu_seconds_total", (("cpu", "all"), ("mode", "system"))): 2.0,
        ("node_cpu_seconds_total", (("cpu", "all"), ("mode", "idle"))): 100.0,
        ("daemon_cpu_cores", ()): 4,
        ("node_memory_MemTotal_bytes", ()): 1000,
        ("node_memory_MemAvailable_bytes", ()): 600,
        ("node_memory_Buffers_bytes", ()): 5,
        ("node_memory_SwapTotal_bytes", ()): 300,
        ("node_memory_SwapFree_bytes", ()): 200,
        ("node_filesystem_size_bytes", fs): 100,
        ("node_filesystem_avail_bytes", fs): 50,
        ("node_filesystem_free_bytes", fs): 60,
        ("node_disk_read_bytes_total", (("device", "null"),)): 7,
        ("node_disk_written_bytes_total", (("device", "null"),)): 9,
        **{(name, (("device", "eth0"),)): value for name, value in (
            ("node_network_receive_bytes_total", 1), ("node_network_transmit_bytes_total", 2),
            ("node_network_receive_packets_total", 3), ("node_network_transmit_packets_total", 4),
            ("node_network_receive_errs_total", 5), ("node_network_transmit_errs_total", 6),
            ("node_network_receive_drop_total", 7), ("node_network_transmit_drop_total", 8))},
    }
    assert b"# TYPE node_cpu_seconds_total counter" in body
    assert b"# TYPE node_memory_MemTotal_bytes gauge" in body


@pytest.mark.parametrize("metrics", [
    {"cpu": "x"}, {"cpu": {"values": [1]}}, {"memory": {"values": {"total": "big", "available": None}}},
    {"disk": {"values": {"disks": "nope"}}}, {"disk": {"values": {"disks": [1, None, {"device": 3}]}}},
    {"network": {"values": {"interfaces": [{"interface": None, "bytes_recv": 1}]}}},
    {"memory": {"values": {"total": True}}},
])
def test_a_malformed_builtin_group_costs_its_own_samples_never_the_scrape(metrics):
    body, out = render(lambda out: add_node_series(out, metrics))
    assert body == b"" and out.series == 0


def test_disk_io_is_left_out_when_the_collector_had_no_counters():
    row = {"mountpoint": "/x", "device": "/dev/null", "fstype": "ext4", "total": 1, "used": 0, "free": 1,
           "read_bytes": 0, "write_bytes": 0}
    body, _ = render(lambda out: add_node_series(out, {"disk": {"values": {"disks": [row]}}}))
    assert b"node_disk_" not in body and b"node_filesystem_size_bytes" in body


STATUS = {
    "started_at": "2026-12-01T15:57:03.500000Z", "reports_built": 7, "last_report": None,
    "manager": {"connected": True, "registered": False, "outbox_depth": 3, "outbox_bytes": 900,
                "outbox_max_bytes": 1024, "dropped": 2, "last_contact": "2026-12-01T15:58:00.000000Z"},
    "agent": {"state": "BACKOFF", "restarts_total": 4, "restart_count": 1, "heartbeats_received": 9,
              "heartbeats_invalid": 1, "memory_bytes": 1234, "cpu_percent": 0.5},
    "collectors": {"cpu": {"last_run": "2026-12-01T15:58:00.000000Z", "duration_ms": 1.25, "ok": True},
                   "bad": {"duration_ms": "x", "ok": "yes"}},
    "update": {"state": "rolled_back", "component": "agent"},
}


def test_health_series_from_the_status_document():
    body, _ = render(lambda out: add_health_series(out, STATUS))
    got = parse_exposition(body.decode())
    assert got[("daemon_start_time_seconds", ())] == pytest.approx(1796140623.5)
    assert got[("daemon_reports_built_total", ())] == 7
    assert got[("daemon_manager_configured", ())] == 1
    assert got[("daemon_manager_connected", ())] == 1 and got[("daemon_manager_registered", ())] == 0
    assert got[("daemon_outbox_depth", ())] == 3 and got[("daemon_outbox_dropped_total", ())] == 2
    assert got[("daemon_manager_last_contact_timestamp_seconds", ())] == pytest.approx(1796140680.0)
    assert {k[1][0][1]: v for k, v in got.items() if k[0] == "daemon_agent_state"} == {
        s: int(s == "BACKOFF") for s in AGENT_STATES}
    assert got[("daemon_agent_restarts_total", ())] == 4
    assert got[("daemon_collector_last_duration_seconds", (("collector", "cpu"),))] == 0.00125
    assert got[("daemon_collector_success", (("collector", "cpu"),))] == 1
    assert not any(k[1] == (("collector", "bad"),) for k in got)
    assert {k[1][0][1]: v for k, v in got.items() if k[0] == "daemon_update_state"} == {
        s: int(s == "rolled_back") for s in UPDATE_STATES}
    assert ("daemon_last_report_timestamp_seconds", ()) not in got


def test_stand_alone_status_says_so_and_has_no_link_series():
    body, _ = render(lambda out: add_health_series(out, {"manager": None, "agent": None, "update": None}))
    got = parse_exposition(body.decode())
    assert got[("daemon_manager_configured", ())] == 0
    link_or_agent = ("daemon_outbox", "daemon_agent", "daemon_manager_connected")
    assert not any(k[0].startswith(link_or_agent) for k in got)
    assert got[("daemon_update_state", (("state", "none"),))] == 1


@pytest.mark.parametrize("text", [None, 5, "", "yesterday", "2026-12-01T15:57:03Z", "x" * 1000])
def test_unix_time_refuses_what_is_not_our_rfc3339(text):
    assert unix_time(text) is None


def test_state_names_agree_with_the_supervisor_and_the_updater():
    from daemon_app.agent import supervisor
    from daemon_app.update import flow

    assert set(AGENT_STATES) == {supervisor.STOPPED, supervisor.STARTING, supervisor.RUNNING,
                                 supervisor.BACKOFF, supervisor.STOPPING, supervisor.EXITED, supervisor.FATAL}
    assert set(flow.STATES) <= set(UPDATE_STATES)


def test_plugin_values_follow_the_generic_naming_rule():
    metrics = {"loadavg": {"values": {"load1": 0.5, "Load 5m": 2, "ok": True, "name": "x",
                                      "temps": {"CPU-0": 41.5, "label": "s"}, "rows": [1, 2]}},
               "cpu": {"values": {"user": 1.0}}, "weird": "not a dict"}
    body, _ = render(lambda out: add_plugin_series(out, metrics, BUILTIN_GROUPS))
    got = parse_exposition(body.decode())
    assert got == {("daemon_plugin_loadavg_load1", ()): 0.5, ("daemon_plugin_loadavg_load_5m", ()): 2,
                   ("daemon_plugin_loadavg_ok", ()): 1, ("daemon_plugin_loadavg_temps_cpu_0", ()): 41.5}
    assert sanitize_name("Ünïcode / Ärger!") == "n_code_rger"


def test_a_plugin_flood_is_bounded_and_the_exporters_own_series_survive():
    flood = {"flood": {"values": {f"v{i}": i for i in range(100_000)}}}
    exporter = PrometheusExporter("127.0.0.1:0", 50, status=lambda: STATUS)
    body = exporter.render({"metrics": flood})
    got = parse_exposition(body.decode())
    assert sum(1 for k in got if k[0].startswith("daemon_plugin_flood")) < 50
    assert got[("daemon_prometheus_series_dropped", ())] > 99_000
    python = ".".join(str(n) for n in sys.version_info[:3])
    assert ("daemon_build_info", (("build_id", "dev"), ("python", python),
                                  ("version", __import__("daemon_app").__version__))) in got


def test_random_report_shapes_render_or_drop_never_raise():
    rng = random.Random(15)
    atoms = [None, True, 0, -1, 2**70, 1.5, float("nan"), "", "x\n\"", [], {}, b"\xff"]

    def value(depth: int):
        kind = rng.random()
        if depth > 3 or kind < 0.5:
            return rng.choice(atoms)
        if kind < 0.75:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["total", "disks", "interfaces", "values", "device", "user", "k é", 5]):
                value(depth + 1) for _ in range(rng.randrange(5))}

    exporter = PrometheusExporter("127.0.0.1:0", 200, status=lambda: value(0) if rng.random() < 0.5 else {})
    for _ in range(2000):
        metrics = {rng.choice(["cpu", "memory", "disk", "network", "p", "é"]): value(0) for _ in range(3)}
        body = exporter.render({"metrics": metrics} if rng.random() < 0.9 else {"metrics": value(0)})
        parse_exposition(body.decode())


def test_a_status_that_cannot_be_read_leaves_out_the_health_series_only():
    def broken():
        raise OSError("control socket gone")

    exporter = PrometheusExporter("127.0.0.1:0", 100, status=broken)
    got = parse_exposition(exporter.render({"metrics": {"memory": {"values": {"total": 5}}}}).decode())
    assert got[("node_memory_MemTotal_bytes", ())] == 5
    assert got[("daemon_prometheus_status_errors_total", ())] == 1
    assert not any(k[0] == "daemon_update_state" for k in got)


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("listen", ["127.0.0.1:9100", "0.0.0.0:0", "[::1]:9100", "[::]:65535"])
def test_good_listen_addresses_are_accepted(listen):
    cfg = config_mod.validate({"prometheus": {"enabled": True, "listen": listen}})
    assert cfg.prometheus.listen == listen


@pytest.mark.parametrize("listen", ["localhost:9100", "127.0.0.1", ":9100", "127.0.0.1:99999",
                                    "999.1.1.1:9100",
                                    "[::1]", "::1:9100", "[zz::1]:80", "", "127.0.0.1:91 00"])
def test_a_bad_listen_address_is_a_d1002_even_when_disabled(listen):
    with pytest.raises(ConfigValidateError) as err:
        config_mod.validate({"prometheus": {"listen": listen}})
    assert err.value.code == "D1002"
    assert any(p.startswith("prometheus.listen: ") for p in err.value.problems)


def test_config_check_reports_a_bad_listen_address_with_d1002(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("prometheus:\n  enabled: true\n  listen: 'prometheus.example:9100'\n")
    out = subprocess.run([sys.executable, "-m", "daemon_app", "-c", str(path), "config", "check"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    assert "D1002" in out.stderr + out.stdout and "prometheus.listen" in out.stderr + out.stdout


@pytest.mark.parametrize("enabled", [False, True])
def test_nothing_of_the_exporter_is_imported_unless_enabled(tmp_path, enabled):
    code = (
        "import json, sys\n"
        "from daemon_app import config, plugins\n"
        f"cfg = config.validate({{'daemon': {{'work_dir': {str(tmp_path)!r}}},"
        f" 'prometheus': {{'enabled': {enabled}}}}})\n"
        "p = plugins.load_all(cfg)\n"
        "print(json.dumps([sorted(m for m in sys.modules if m.startswith('daemon_app.prometheus')),"
        " [i['name'] for i in p.describe()]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, check=True)
    modules, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert bool(modules) is enabled
    assert ("prometheus" in names) is enabled
