//! The operator's kit stays true to the code: every metric the Prometheus
//! rules and the Grafana dashboard use is one the code exports (names live
//! in src/metrics.rs), the dashboard is valid JSON, and the rules pass
//! `promtool check rules` where promtool is installed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `jetcode_*` names in `text`, without Prometheus' histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("jetcode_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboards_and_rules_use_only_metrics_the_code_exports() {
    let exported: BTreeSet<String> = std::fs::read_to_string(root().join("src/metrics.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_string)
        .collect();
    assert!(exported.contains("jetcode_scaler_lag"), "{exported:?}");
    let files = [
        "ops/prometheus/alerts.yml",
        "ops/grafana/jetcode-dashboard.json",
    ];
    for f in files {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{f} uses no metric");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{f} uses metrics the code does not export: {unknown:?}"
        );
    }
    let dashboard =
        std::fs::read_to_string(root().join("ops/grafana/jetcode-dashboard.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(v["panels"].as_array().is_some_and(|p| !p.is_empty()));
}

#[test]
fn alert_rules_pass_promtool_where_installed() {
    let rules = root().join("ops/prometheus/alerts.yml");
    match Command::new("promtool").arg("check").arg("rules").arg(&rules).output() {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!(
            "promtool is not installed (Debian's prometheus package has it): rules checked only by the metric-name test"
        ),
    }
}
