//! The operator's kit stays true to the code: every metric the Prometheus
//! rules and the Grafana dashboard use is one the code exports (names live
//! in src/metrics.rs), the dashboard is valid JSON, and the rules pass
//! `promtool check rules` where promtool is installed; the systemd units
//! pass `systemd-analyze verify` and the nats-server configs `nats-server -t`.

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

/// The shipped units, with their binaries pointed at this build, pass
/// `systemd-analyze verify` with no warning (it exits 0 on unknown keys
/// and bad values, so any output is a failure). `bin/dev` installs
/// systemd's tools where they are missing.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let jetcode = env!("CARGO_BIN_EXE_jetcode");
    let nats = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let nats = which(&nats).unwrap_or_else(|| panic!("no nats-server at {nats} (run bin/dev)"));
    let mut units = Vec::new();
    for entry in std::fs::read_dir(root().join("ops/systemd")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/jetcode", jetcode)
            .replace("/usr/local/bin/nats-server", &nats.to_string_lossy());
        // A template is verified as one instance of it.
        let name = name.replace("@.service", "@1.service");
        std::fs::write(dir.path().join(&name), text).unwrap();
        units.push(dir.path().join(name));
    }
    assert!(units.len() >= 3, "units: {units:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian's systemd package; bin/dev installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// The shipped nats-server configurations parse (`nats-server -t`).
#[test]
fn nats_configs_pass_nats_server_test() {
    let nats = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("ops/nats")).unwrap() {
        let path = entry.unwrap().path();
        // secure.conf names certificate files and includes the accounts of
        // jetcode-auth.conf: tests/security.rs runs both with certificates
        // it generates.
        let tested_elsewhere = path.ends_with("secure.conf") || path.ends_with("jetcode-auth.conf");
        if path.extension().is_none_or(|e| e != "conf") || tested_elsewhere {
            continue;
        }
        let out = Command::new(&nats)
            .arg("-c")
            .arg(&path)
            .arg("-t")
            // cluster-node.conf takes its name from the environment, the
            // accounts their passwords.
            .env("NATS_SERVER_NAME", "n1")
            .env("JETCODE_WORKER_PASSWORD", "w")
            .env("JETCODE_PRODUCER_PASSWORD", "p")
            .env("JETCODE_ADMIN_PASSWORD", "a")
            .output()
            .expect("nats-server (run bin/dev)");
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 2);
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.exists().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|c| c.exists())
    })
}
