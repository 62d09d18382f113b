"""Schema check for alerts.yml when promtool is not installed: structure, required fields,
and that every lectern_* metric in an expression is one the Rust sources export."""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(sys.argv[1])
rules = yaml.safe_load((root / "deploy/prometheus/alerts.yml").read_text())
src = "\n".join(p.read_text() for p in root.glob("*/src/**/*.rs"))
exported = set(re.findall(r'"(lectern_[a-z_]+)"', src))
problems = []
seen = set()
for g in rules["groups"]:
    assert isinstance(g["name"], str) and g["rules"], g
    for r in g["rules"]:
        name = r.get("alert")
        if not name or name in seen:
            problems.append(f"missing or duplicate alert name: {r}")
        seen.add(name)
        for key in ("expr", "for", "labels", "annotations"):
            if key not in r:
                problems.append(f"{name}: no {key}")
        if not re.fullmatch(r"\d+[smh]", str(r.get("for", ""))):
            problems.append(f"{name}: bad for {r.get('for')}")
        if r.get("labels", {}).get("severity") not in ("page", "ticket"):
            problems.append(f"{name}: severity must be page or ticket")
        if "summary" not in r.get("annotations", {}):
            problems.append(f"{name}: no summary")
        expr = r.get("expr", "")
        if expr.count("(") != expr.count(")"):
            problems.append(f"{name}: unbalanced parentheses")
        for m in re.findall(r"lectern_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            if base not in exported:
                problems.append(f"{name}: metric {m} is not exported by Lectern")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"ok: {len(seen)} alerts")
