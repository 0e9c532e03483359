"""The deployment files stay consistent with the code and with each other.

Compose references only files that exist; the dashboard and the alert rules use only
metrics that exchange.observability.metrics defines; promtool accepts and passes the rules;
the systemd unit is hardened and valid; docs/OPERATIONS.md covers every metric and alert.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extras: .venv/bin/pip install -e '.[dev]'")

from exchange.observability.metrics import Metrics, sample_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "exchange.json"
UNIT = DEPLOY / "systemd" / "exchange.service"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

#: Series Prometheus makes itself; everything else must come from our registry.
PROMETHEUS_SYNTHETIC = {"up"}
#: RabbitMQ's own metrics (rabbitmq_prometheus plugin, job "rabbitmq") that alerts read.
RABBITMQ_METRICS = {
    "rabbitmq_process_open_fds",
    "rabbitmq_process_max_fds",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_resident_memory_limit_bytes",
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "le",
    "atan2",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def known_metrics() -> frozenset[str]:
    from exchange.hub.monitor import HubMetrics  # `exchange hub exporter`'s metrics (docs/FEDERATION.md)

    return frozenset(sample_names(Metrics().registry)) | frozenset(sample_names(HubMetrics().registry))


def metrics_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (labels, functions, keywords and numbers removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery windows
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "", e)  # Grafana variables
    e = re.sub(r"\boffset\s+\w+", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def test_metrics_in_parses_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, agency) (rate(exchange_delivery_latency_seconds_bucket"
        '{agency=~"$agency", outcome="x"}[$__rate_interval]))) / ignoring(job) up{job="a"} offset 5m'
    )
    assert metrics_in(expr) == {"exchange_delivery_latency_seconds_bucket", "up"}


# -- compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_references_only_existing_files() -> None:
    doc = compose()
    here = COMPOSE.parent
    declared_volumes = set(doc.get("volumes") or {})
    missing: list[str] = []
    for name, svc in doc["services"].items():
        build = svc.get("build")
        if build:
            ctx = here / (build if isinstance(build, str) else build.get("context", "."))
            if not ctx.is_dir():
                missing.append(f"{name}: build context {ctx}")
            if isinstance(build, dict) and "dockerfile" in build and not (ctx / build["dockerfile"]).is_file():
                missing.append(f"{name}: dockerfile {ctx / build['dockerfile']}")
        for vol in svc.get("volumes", []):
            source = vol.get("source", "") if isinstance(vol, dict) else vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                if not (here / source).exists():
                    missing.append(f"{name}: bind mount {source}")
            elif source and source not in declared_volumes:
                missing.append(f"{name}: named volume {source} is not declared under volumes:")
        env_files = svc.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            if not (here / path).is_file():
                missing.append(f"{name}: env_file {path}")
        for ref in svc.get("configs", []) + svc.get("secrets", []):
            src = ref if isinstance(ref, str) else ref.get("source")
            top = (doc.get("configs") or {}) | (doc.get("secrets") or {})
            if src not in top:
                missing.append(f"{name}: config/secret {src} not declared")
    for kind in ("configs", "secrets"):
        for key, spec in (doc.get(kind) or {}).items():
            if "file" in spec and not (here / spec["file"]).exists():
                missing.append(f"{kind}.{key}: file {spec['file']}")
    assert not missing, "\n".join(missing)


def test_compose_has_the_whole_stack() -> None:
    services = compose()["services"]
    assert {"rabbit1", "rabbit2", "rabbit3", "postgres", "node-a", "node-b", "prometheus", "grafana"} <= set(services)
    for n in (1, 2, 3):
        rabbit = services[f"rabbit{n}"]
        assert rabbit["hostname"] == f"rabbit{n}"
        assert rabbit["image"].startswith("rabbitmq:3.1")
        mounts = " ".join(rabbit["volumes"])
        assert "rabbitmq.conf:/etc/rabbitmq/rabbitmq.conf" in mounts
        assert "enabled_plugins:/etc/rabbitmq/enabled_plugins" in mounts
        assert "RABBITMQ_ERLANG_COOKIE" not in json.dumps(rabbit)  # deprecated
    assert services["postgres"]["image"].startswith("postgres:15")
    for node in ("node-a", "node-b"):
        assert services[node]["build"]["dockerfile"] == "deploy/compose/Dockerfile"
        assert any(v.startswith(f"./{node}.toml:") for v in services[node]["volumes"])


def test_dockerfile_copies_existing_paths() -> None:
    dockerfile = (DEPLOY / "compose" / "Dockerfile").read_text(encoding="utf-8")
    context = (COMPOSE.parent / compose()["services"]["node-a"]["build"]["context"]).resolve()
    assert "pip install" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (context / src).exists(), f"Dockerfile: COPY {src} does not exist in {context}"


def test_rabbitmq_cluster_shares_one_cookie_via_env_file() -> None:
    env = (DEPLOY / "compose" / "rabbitmq.env").read_text(encoding="utf-8")
    server = re.search(r"^RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=.*-setcookie (\S+)", env, re.M)
    ctl = re.search(r"^RABBITMQ_CTL_ERL_ARGS=.*-setcookie (\S+)", env, re.M)
    assert server and ctl and server.group(1) == ctl.group(1)


def test_rabbitmq_config_forms_a_quorum_cluster() -> None:
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    settings = dict(
        (k.strip(), v.strip())
        for k, _, v in (
            line.partition("=") for line in conf.splitlines() if line.strip() and not line.lstrip().startswith("#")
        )
    )
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    assert {settings[f"cluster_formation.classic_config.nodes.{n}"] for n in (1, 2, 3)} == {
        "rabbit@rabbit1",
        "rabbit@rabbit2",
        "rabbit@rabbit3",
    }
    assert settings["default_queue_type"] == "quorum"
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"\[[a-z_,\s]*\]\.", plugins)
    assert "rabbitmq_prometheus" in plugins and "rabbitmq_management" in plugins


@pytest.mark.parametrize("name", ["node-a", "node-b"])
def test_node_toml_has_the_agreed_shape(name: str) -> None:
    doc = tomllib.loads((DEPLOY / "compose" / f"{name}.toml").read_text(encoding="utf-8"))
    assert doc["node"]["name"] == name and doc["node"]["data_dir"]
    assert {"url", "prefix", "vhost"} <= set(doc["amqp"])
    assert "@rabbit" in doc["amqp"]["url"]
    assert doc["store"]["url"].startswith("postgresql://") and "@postgres:" in doc["store"]["url"]
    assert {"host", "port", "tls_cert", "tls_key"} <= set(doc["http"])
    assert doc["pki"]["ca_files"] and "crl_files" in doc["pki"]
    assert doc["agencies"] and all({"code", "name", "key", "cert", "adapter"} <= set(a) for a in doc["agencies"])
    assert doc["directory"]["file"]


def test_production_example_uses_tls_and_postgresql() -> None:
    doc = tomllib.loads((DEPLOY / "examples" / "production.toml").read_text(encoding="utf-8"))
    assert doc["amqp"]["url"].startswith("amqps://")
    assert doc["amqp"]["ca_file"] and doc["amqp"]["cert_file"] and doc["amqp"]["key_file"]
    assert doc["http"]["tls_cert"] and doc["http"]["tls_key"]
    assert doc["store"]["url"].startswith("postgresql://")


# -- prometheus -------------------------------------------------------------------------


def test_prometheus_scrapes_both_nodes_and_rabbitmq() -> None:
    doc = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in doc["scrape_configs"]}
    assert set(jobs["exchange"]) == {"node-a:8080", "node-b:8080"}
    assert all(t.endswith(":15692") for t in jobs["rabbitmq"]) and len(jobs["rabbitmq"]) == 3
    assert [Path(r).name for r in doc["rule_files"]] == ["alerts.yml"]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


REQUIRED_ALERTS = {
    "ExchangeBrokerFileDescriptors",
    "ExchangeBrokerMemoryHigh",
    "ExchangeQueueStuck",
    "ExchangeFailuresRising",
    "ExchangeReceiptsOverdue",
    "ExchangeCertificateExpiringSoon",
    "ExchangeCertificateExpired",
    "ExchangeNodeDown",
    "ExchangeBrokerDown",
    "ExchangeOutboxGrowing",
}


def test_alerts_are_complete_labelled_and_have_runbooks() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert set(names) >= REQUIRED_ALERTS and len(names) == len(set(names))
    ops = OPERATIONS.read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+\s+(.*)$", ops, re.M)
    }
    for r in rules:
        assert r["labels"]["severity"] in {"page", "ticket"}, r["alert"]
        url = r["annotations"]["runbook_url"]
        # absolute: the base is the external label runbook_base_url (deploy/prometheus/prometheus.yml)
        assert url == f"{{{{ $externalLabels.runbook_base_url }}}}#{r['alert'].lower()}", url
        assert url.split("#", 1)[1] in anchors, f"docs/OPERATIONS.md has no section for {r['alert']}"
        assert r["annotations"]["summary"] and r["annotations"]["description"]


def test_alerts_use_only_defined_metrics() -> None:
    known = known_metrics() | PROMETHEUS_SYNTHETIC | RABBITMQ_METRICS
    for r in alert_rules():
        used = metrics_in(r["expr"])
        assert used, r["alert"]
        assert used <= known, f"{r['alert']} uses undefined metrics {used - known}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases: dict[str, dict[str, int]] = {}
    for group in load_yaml(ALERT_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            c = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
            c["firing" if case.get("exp_alerts") else "quiet"] += 1
    for r in alert_rules():
        c = cases.get(r["alert"], {"firing": 0, "quiet": 0})
        assert c["firing"] and c["quiet"], f"{r['alert']}: needs a firing and a not-firing case, has {c}"


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        # One attempt, as deploy/setup.sh --test does.
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "prometheus"],
            capture_output=True,
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool not found and could not be installed (Debian package `prometheus`; "
            "deploy/setup.sh --test installs it)"
        )
    return found


def test_promtool_check_rules(promtool: str) -> None:
    proc = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ALERT_TESTS.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config(promtool: str, tmp_path: Path) -> None:
    # The config names the rules file by its path inside the container: check a copy pointing here.
    doc = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    doc["rule_files"] = [str(ALERTS)]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(doc), encoding="utf-8")
    proc = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- grafana ----------------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if q:
            out.append((f"variable {var['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q)))
    return out


def test_dashboard_queries_use_only_defined_metrics() -> None:
    known = known_metrics() | PROMETHEUS_SYNTHETIC
    queries = dashboard_queries()
    assert len(queries) >= 10
    for title, expr in queries:
        used = metrics_in(expr)
        assert used, f"{title}: no metric in {expr!r}"
        assert used <= known, f"{title}: undefined metrics {used - known} in {expr!r}"


def test_dashboard_covers_the_operational_questions() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    text = " ".join(expr for _, expr in dashboard_queries())
    for needed in (
        "exchange_documents_submitted_total",
        "exchange_delivery_latency_seconds_bucket",
        "exchange_queue_depth",
        "exchange_queue_oldest_message_age_seconds",
        'outcome="failed"',
        "exchange_dead_letters_total",
        "exchange_rejections_total",
        "exchange_certificate_expiry_seconds",
        "exchange_outbox_size",
        "exchange_broker_up",
        "exchange_store_up",
    ):
        assert needed in text, needed
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in text
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "exchange.yml")["providers"][0]
    mounts = compose()["services"]["grafana"]["volumes"]
    target = next(v.split(":")[1] for v in mounts if v.startswith("../grafana/dashboards:"))
    assert provider["options"]["path"] == target


# -- systemd ----------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_systemd_unit_is_hardened() -> None:
    u = unit()
    svc = u["Service"]
    assert svc["User"] == "exchange"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert "/var/lib/exchange" in svc["ReadWritePaths"]
    assert svc["Restart"] == "on-failure"
    assert "exchange serve" in svc["ExecStart"]
    after = u["Unit"]["After"].split()
    assert "rabbitmq-server.service" in after and "postgresql.service" in after
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not available; test_systemd_unit_is_hardened checked the keys")
    # The ExecStart binary exists only on a real install: verify a copy pointing at /bin/true.
    text = UNIT.read_text(encoding="utf-8").replace(
        "/opt/exchange/.venv/bin/exchange", shutil.which("true") or "/bin/true"
    )
    copy = tmp_path / "exchange.service"
    copy.write_text(text, encoding="utf-8")
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [
        line for line in (proc.stdout + proc.stderr).splitlines() if line.strip() and "exchange.service" in line
    ]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


# -- cluster script and docs ------------------------------------------------------------


def test_cluster_script_is_valid_bash() -> None:
    script = DEPLOY / "cluster" / "rabbit-cluster.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_operations_doc_lists_every_metric_and_alert() -> None:
    ops = OPERATIONS.read_text(encoding="utf-8")
    for family in Metrics().registry.collect():
        name = {"counter": f"{family.name}_total", "info": f"{family.name}_info"}.get(family.type, family.name)
        assert f"`{name}`" in ops, f"docs/OPERATIONS.md does not describe {name}"
    for r in alert_rules():
        assert re.search(rf"^#+\s+{r['alert']}\s*$", ops, re.M), f"no runbook section for {r['alert']}"
