#!/usr/bin/env python3
"""Validates everything under deploy/ offline, with real validators:

- `kubectl kustomize` renders the base and every overlay;
- kubernetes-validate (strict, pinned Kubernetes version) checks every built-in resource;
- custom resources (KEDA, Gateway API, Prometheus Operator) are checked against the
  openAPIV3Schema of the CRDs vendored in deploy/k8s/crds/, strictly: an unknown field fails;
- self-tests prove both checks fail on a misspelled field and on a wrongly typed one;
- checkov (--skip-download) scans the rendered manifests and the Dockerfile; hadolint lints the
  Dockerfile; every skipped rule has its reason below;
- docker-compose (a real Compose implementation) validates deploy/compose/compose.yaml;
- the PrometheusRule is current with deploy/prometheus/alerts.yml.

Usage: validate.py [--print-keda-query]   (run with the deploy venv, see scripts/lib.sh)
"""
import copy
import json
import pathlib
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"

# checkov rules that do not apply, each with the reason. Everything else must pass.
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images are set by tag in the overlays (images:); pinning digests is the release pipeline's job",
    "CKV_K8S_15": "imagePullPolicy IfNotPresent is right for immutable release tags",
    "CKV_K8S_35": "secrets reach Lectern as environment variables (LECTERN_SECRET, LECTERN_DATABASE_URL): its configuration is env-based by design",
    "CKV_K8S_11": "no CPU limit on the web tier: CFS throttling adds tail latency; workers have one, and their encoder thread count follows it",
    "CKV_K8S_21": "the base sets no namespace: each overlay does (namespace:)",
}


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def render(path):
    r = run(["kubectl", "kustomize", str(path)])
    if r.returncode != 0:
        sys.exit(f"kubectl kustomize {path} failed:\n{r.stderr}")
    return r.stdout, [d for d in yaml.safe_load_all(r.stdout) if d]


def crd_schemas():
    """(apiVersion, kind) -> strict JSON schema, from the vendored CRDs."""
    out = {}
    for f in sorted(K8S.glob("crds/*/*.yaml")):
        for crd in yaml.safe_load_all(f.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
                out[(f"{group}/{v['name']}", kind)] = strict(schema)
    return out


def strict(s):
    """Closes every object schema that lists its properties, as the API server's pruning would
    silently drop unknown fields; here they must fail."""
    if isinstance(s, dict):
        if (
            s.get("type") == "object"
            and "properties" in s
            and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")
        ):
            s["additionalProperties"] = False
        for k, v in list(s.items()):
            if k in ("properties", "patternProperties", "definitions"):
                for name in v:
                    v[name] = strict(v[name])
            elif k in ("items", "additionalProperties", "not"):
                s[k] = strict(v)
            elif k in ("allOf", "anyOf", "oneOf"):
                s[k] = [strict(x) for x in v]
    return s


def check(doc, crds):
    """Returns a list of problems with one resource."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in crds:
        v = jsonschema.Draft7Validator(crds[key])
        return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in v.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return []
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key}: vendor its CRD into deploy/k8s/crds/"]


def self_test(crds, docs):
    """Both checks must catch a misspelled and a wrongly typed field."""
    so = next(d for d in docs if d["kind"] == "ScaledObject")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    cases = []
    bad = copy.deepcopy(so)
    bad["spec"]["minReplicaCunt"] = 1
    cases.append(("ScaledObject with a misspelled field", bad))
    bad = copy.deepcopy(so)
    bad["spec"]["maxReplicaCount"] = "twenty"
    cases.append(("ScaledObject with a wrongly typed field", bad))
    bad = copy.deepcopy(so)
    bad["spec"]["triggers"][0]["metadataa"] = bad["spec"]["triggers"][0].pop("metadata")
    cases.append(("ScaledObject trigger with a misspelled field", bad))
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    cases.append(("Deployment with a misspelled field", bad))
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "two"
    cases.append(("Deployment with a wrongly typed field", bad))
    for name, doc in cases:
        if not check(doc, crds):
            sys.exit(f"self-test failed: a {name} passed validation")


def checkov(rendered_files):
    skip = ",".join(sorted(CHECKOV_SKIPS))
    problems = []
    for framework, f in rendered_files:
        r = run(
            [
                str(pathlib.Path(sys.executable).parent / "checkov"),
                "--skip-download",
                "--quiet",
                "--compact",
                "--framework",
                framework,
                "--skip-check",
                skip,
                "-o",
                "json",
                "-f",
                str(f),
            ]
        )
        try:
            reports = json.loads(r.stdout or "[]")
        except json.JSONDecodeError:
            sys.exit(f"checkov on {f} failed:\n{r.stdout}\n{r.stderr}")
        if isinstance(reports, dict):
            reports = [reports]
        for rep in reports:
            for fail in rep.get("results", {}).get("failed_checks", []):
                problems.append(
                    f"checkov {fail['check_id']} ({fail['check_name']}) on {fail.get('resource')} in {f.name}"
                )
    return problems


def main():
    crds = crd_schemas()
    problems = []
    rendered = {}
    for path in [K8S / "base"] + sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir()):
        text, docs = render(path)
        rendered[path.name] = (text, docs)
        for d in docs:
            for p in check(d, crds):
                problems.append(f"{path.relative_to(ROOT)}: {d['kind']}/{d['metadata']['name']}: {p}")
    for comp in sorted((K8S / "components").iterdir()):
        for f in sorted(comp.glob("*.yaml")):
            if f.name == "kustomization.yaml":
                continue
            for d in yaml.safe_load_all(f.read_text()):
                if d:
                    for p in check(d, crds):
                        problems.append(f"{f.relative_to(ROOT)}: {d['kind']}: {p}")
    scalable = rendered["scalable"][1]
    if "--print-keda-query" in sys.argv:
        so = next(d for d in scalable if d["kind"] == "ScaledObject")
        print(so["spec"]["triggers"][0]["metadata"]["query"])
        return
    self_test(crds, scalable)

    # Every overlay must keep the cluster's fixed points.
    kinds = {(d["kind"], d["metadata"]["name"]) for d in scalable}
    for need in [
        ("ScaledObject", "lectern-worker"),
        ("Deployment", "lectern-worker"),
        ("Deployment", "lectern-web"),
        ("Job", "lectern-migrate"),
    ]:
        if need not in kinds:
            problems.append(f"overlays/scalable lacks {need}")
    worker = next(d for d in scalable if d["kind"] == "Deployment" and d["metadata"]["name"] == "lectern-worker")
    cfg = next(d for d in scalable if d["kind"] == "ConfigMap")
    drain = cfg["data"]["LECTERN_WORKER_DRAIN_TIMEOUT"]
    secs = int(drain[:-1]) * {"s": 1, "m": 60, "h": 3600}[drain[-1]]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    delay = int(cfg["data"]["LECTERN_SHUTDOWN_DELAY_S"])
    if grace < secs + delay + 30:
        problems.append(f"worker terminationGracePeriodSeconds {grace} < drain {secs} + delay {delay} + 30")

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, (text, _) in rendered.items():
            f = pathlib.Path(tmp) / f"{name}.yaml"
            f.write_text(text)
            files.append(("kubernetes", f))
        files.append(("dockerfile", ROOT / "deploy" / "docker" / "Dockerfile"))
        problems += checkov(files)

    r = run([str(pathlib.Path(sys.executable).parent / "hadolint"), str(ROOT / "deploy" / "docker" / "Dockerfile")])
    if r.returncode != 0:
        problems.append(f"hadolint:\n{r.stdout}{r.stderr}")

    r = run(["docker-compose", "-f", str(ROOT / "deploy" / "compose" / "compose.yaml"), "config", "-q"])
    if r.returncode != 0:
        problems.append(f"docker-compose config:\n{r.stdout}{r.stderr}")

    r = run([sys.executable, str(K8S / "gen-prometheusrule.py"), "--check"])
    if r.returncode != 0:
        problems.append(r.stderr.strip() or r.stdout.strip())

    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"deploy/ is valid: {sum(len(d) for _, d in rendered.values())} rendered resources in {len(rendered)} trees")


if __name__ == "__main__":
    main()
