#!/usr/bin/env python3
"""Writes components/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml, so the
Prometheus Operator loads exactly the alert rules a plain Prometheus does.
Run after editing alerts.yml:  python3 deploy/k8s/gen-prometheusrule.py
With --check it only compares (lectern/tests/deploy.rs runs that)."""
import pathlib
import sys

import yaml

here = pathlib.Path(__file__).resolve().parent
rules = yaml.safe_load((here.parent / "prometheus" / "alerts.yml").read_text())
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "lectern"},
    "spec": {"groups": rules["groups"]},
}
text = (
    "# Generated from deploy/prometheus/alerts.yml by deploy/k8s/gen-prometheusrule.py; do not edit.\n"
    + yaml.safe_dump(doc, sort_keys=False, width=1000)
)
out = here / "components" / "monitoring" / "prometheusrule.yaml"
if "--check" in sys.argv:
    if not out.exists() or out.read_text() != text:
        sys.exit(f"{out} is stale: run python3 deploy/k8s/gen-prometheusrule.py")
else:
    out.write_text(text)
