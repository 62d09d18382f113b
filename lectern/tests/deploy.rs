//! Deployment files: the Prometheus alert rules are valid and only name metrics Lectern exports.

use std::path::Path;
use std::process::Command;

#[test]
fn alert_rules_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = root.join("deploy/prometheus/alerts.yml");
    if let Ok(o) = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        assert!(
            o.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // Always also the schema and metric-name check (promtool cannot know our metric names).
    let python = std::env::var("LECTERN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let o = Command::new(python)
        .arg(root.join("deploy/prometheus/check_alerts.py"))
        .arg(&root)
        .output()
        .expect("python with PyYAML (scripts/test.sh sets LECTERN_TEST_PYTHON)");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every manifest, the Dockerfile and the compose file pass real validators offline (see
/// deploy/validate.py: kustomize, kubernetes-validate, the vendored CRDs' schemas, checkov,
/// hadolint, docker-compose), and the validators themselves catch a bad field.
#[test]
fn deployment_files_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var("LECTERN_TEST_DEPLOY_PYTHON").unwrap_or_else(|_| {
        root.join("target/deployenv/bin/python")
            .display()
            .to_string()
    });
    let o = Command::new(&python)
        .arg(root.join("deploy/validate.py"))
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (scripts/test.sh installs the deploy venv)"));
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("is valid"));
}
