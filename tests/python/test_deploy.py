"""The monitoring files in deploy/ are valid and only name metrics quantd exports.

Run by CTest (see tests/CMakeLists.txt); promtool comes from Debian's prometheus package.
"""
import json
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "quantd-dashboard.json"
PROMTOOL = shutil.which("promtool")


def exported_families():
    """Metric family names server/metrics.cc exports: registered families (`.Name("...")`)
    and the per-GPU families its DeviceCollector builds at each scrape (`Family("...", ...)`)."""
    source = (ROOT / "server" / "metrics.cc").read_text()
    return set(re.findall(r'(?:\.Name|Family)\(\s*"(quantd_[a-z_]+)"', source))


def referenced_families(text):
    names = set(re.findall(r"\b(quantd_[a-z_]+)", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_server_exports_the_expected_families():
    families = exported_families()
    for name in ["quantd_request_duration_seconds", "quantd_queue_wait_seconds",
                 "quantd_compute_duration_seconds", "quantd_requests_total",
                 "quantd_bytes_received_total", "quantd_bytes_sent_total",
                 "quantd_requests_in_flight", "quantd_sqnr_db",
                 "quantd_gpu_kernel_duration_seconds", "quantd_gpu_copy_bytes_total",
                 "quantd_gpu_streams_busy", "quantd_gpu_memory_in_use_bytes"]:
        assert name in families


def test_dashboard_names_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v.get("query", "") for v in dashboard["templating"]["list"]]
    assert exprs
    missing = referenced_families(" ".join(exprs)) - exported_families()
    assert not missing, f"dashboard queries metrics the server does not export: {missing}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_name_only_exported_metrics():
    missing = referenced_families((PROMETHEUS / "alerts.yml").read_text()) - exported_families()
    assert not missing, f"alerts query metrics the server does not export: {missing}"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: prometheus)")
def test_prometheus_config_and_rules_are_valid():
    subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=PROMETHEUS, check=True)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: prometheus)")
def test_alerts_fire_as_specified():
    subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, check=True)
