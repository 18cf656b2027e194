"""The shipped Prometheus rules and Grafana dashboard (monitoring/): they parse, and every metric
they name is one a real cairnd exports on its metrics endpoint."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[3] / "monitoring"
RULES = MONITORING / "cairn.rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# PromQL words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("_sum", "_count", "_created")}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords,
    label names, strings, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        after = text[match.end():].lstrip()
        if after.startswith("(") or word.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def exported(metrics_text: str) -> set[str]:
    """Every sample name the endpoint can produce, from its TYPE lines (also for metrics with no sample yet)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.MULTILINE):
        base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
        names.update(base + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


@pytest.fixture(scope="module")
def daemon_metrics(tmp_path_factory) -> set[str]:
    # A module-scoped daemon of our own (start_daemon is per test); scraped once.
    import os
    import subprocess
    import time

    from cairnd_harness import CAIRND, NotifyListener, env_for, init_repo

    base = tmp_path_factory.mktemp("mon")
    src = base / "src"
    src.mkdir()
    repo = init_repo(str(base / "repo"))
    sock_dir = Path("/tmp") / f"cairn-mon-{os.getpid()}"
    sock_dir.mkdir(exist_ok=True)
    config = base / "c.toml"
    config.write_text(f'[repository]\npath = "{repo}"\n[daemon]\nsocket = "{sock_dir / "s.sock"}"\n'
                      f'state_dir = "{base / "state"}"\nmetrics = "127.0.0.1:0"\n'
                      f'[[source]]\nname = "app"\npaths = ["{src}"]\nrpo = "1h"\n')
    notify = NotifyListener(str(sock_dir / "notify"))
    log = base / "cairnd.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([CAIRND, "--config", str(config)], stdout=subprocess.DEVNULL, stderr=err,
                                env=env_for({"NOTIFY_SOCKET": notify.path}))
    try:
        end = time.monotonic() + 30
        while not notify.wait_for("READY=1", 0.2):
            assert proc.poll() is None and time.monotonic() < end, log.read_text()
        url = re.search(r"metrics on (http://\S+/metrics)", log.read_text()).group(1)
        with urllib.request.urlopen(url, timeout=10) as reply:
            return exported(reply.read().decode())
    finally:
        proc.terminate()
        proc.wait(30)
        notify.close()
        subprocess.run(["rm", "-rf", str(sock_dir)], check=False)


def rule_exprs() -> list[tuple[str, str]]:
    data = yaml.safe_load(RULES.read_text())
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    assert rules and all(set(rule) >= {"alert", "expr"} for rule in rules)
    return [(rule["alert"], rule["expr"]) for rule in rules]


def dashboard_exprs() -> list[tuple[str, str]]:
    data = json.loads(DASHBOARD.read_text())
    out = [(panel["title"], target["expr"]) for panel in data["panels"] for target in panel["targets"]]
    for var in data["templating"]["list"]:
        if var.get("type") == "query":
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["query"])
            assert inner, var["query"]
            out.append((f"variable {var['name']}", inner.group(1)))
    assert out
    return out


def test_metric_name_extraction():
    # Guards the checks below: a name hidden in a function, a comparison or a vector match is found.
    expr = ('time() - max by (source) (cairn_a{level="full"}) > on (source) group_left cairn_b '
            "and cairn_c[5m] > 8 * 86400")
    assert metric_names(expr) == {"cairn_a", "cairn_b", "cairn_c"}
    assert metric_names("absent(cairn_missing)") == {"cairn_missing"}


def test_exported_names_follow_the_types():
    text = "# TYPE cairn_sets_total counter\n# TYPE cairn_d histogram\n# TYPE cairn_g gauge\n"
    assert exported(text) >= {"cairn_sets_total", "cairn_d_bucket", "cairn_d_count", "cairn_g"}
    assert "cairn_sets" not in exported(text)


@pytest.mark.parametrize("kind", ["rules", "dashboard"])
def test_every_metric_named_is_exported_by_the_daemon(daemon_metrics, kind):
    exprs = rule_exprs() if kind == "rules" else dashboard_exprs()
    unknown = {(where, name) for where, expr in exprs for name in metric_names(expr) if name not in daemon_metrics}
    assert unknown == set(), f"not exported by cairnd: {sorted(unknown)}"
    named = {name for _, expr in exprs for name in metric_names(expr)}
    assert any(name.startswith("cairn_") for name in named)


def test_documented_metrics_are_exported(daemon_metrics):
    doc = (MONITORING.parent / "docs" / "operations.md").read_text()
    table = set(re.findall(r"^\| `(cairn_[a-z_]+)` \|", doc, re.MULTILINE))
    # A histogram is documented by its family name; its samples carry the suffixes.
    missing = {name for name in table if name not in daemon_metrics and name + "_bucket" not in daemon_metrics}
    assert table and not missing, sorted(missing)
