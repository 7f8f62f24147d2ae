//! NATS security for real: a nats-server started from the shipped
//! `ops/nats/secure.conf` and `ops/nats/jetcode-auth.conf` (TLS with
//! certificates made here by `openssl`, client certificates required,
//! accounts, per-user permissions), and the real `jetcode` binary as a
//! new user would run it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use common::*;

const WORKER_PW: &str = "w0rker-secret";
/// Characters a URL must percent-encode: `@`, `:`, `/`, `%`.
const PRODUCER_PW: &str = "pr@duc:er/secret%1";
const PRODUCER_PW_IN_URL: &str = "pr%40duc%3Aer%2Fsecret%251";
const ADMIN_PW: &str = "adm1n-secret";
const OTHER_PW: &str = "0ther-secret";

fn ops_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ops/nats")
        .join(name)
}

/// `text` with `from` replaced by `to`; panics if `from` is not there, so
/// a changed ops file fails loudly instead of being tested half-applied.
fn swap(text: String, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "ops/nats/secure.conf no longer has {from:?}"
    );
    text.replace(from, to)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// all signed by the CA, in `dir`.
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=jetcode test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let mut req = vec!["req", "-nodes"];
        req.extend(ec);
        let key = format!("{name}-key.pem");
        let csr = format!("{name}.csr");
        let subj = format!("/CN=jetcode test {name}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        let pem = format!("{name}.pem");
        let extfile = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ],
        );
    }
}

/// The shipped secure config running: TLS, accounts, permissions, plus a
/// second account (`OTHER`, user `other`) to show accounts are apart.
struct Secure {
    server: NatsServer,
    dir: tempfile::TempDir,
}

impl Secure {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        make_certs(dir.path());
        std::fs::copy(
            ops_file("jetcode-auth.conf"),
            dir.path().join("jetcode-auth.conf"),
        )
        .unwrap();
        let d = dir.path().display().to_string();
        let conf = std::fs::read_to_string(ops_file("secure.conf")).unwrap();
        let conf = swap(conf, "/etc/jetcode/tls/", &format!("{d}/"));
        let conf = swap(conf, "http: 127.0.0.1:8222\n", "");
        let conf = swap(conf, "max_file_store: 200GB", "max_file_store: 1GB");
        let conf = swap(conf, "/var/lib/jetcode/nats", &format!("{d}/store"));
        let conf = swap(
            conf,
            "JETCODE: $JETCODE_ACCOUNT",
            &format!(
                "JETCODE: $JETCODE_ACCOUNT\n  OTHER: {{ jetstream: enabled, users: [ {{ user: other, password: \"{OTHER_PW}\" }} ] }}"
            ),
        );
        let conf = format!("{conf}\nlog_file: \"{d}/nats.log\"\n");
        let path = dir.path().join("secure.conf");
        std::fs::write(&path, conf).unwrap();
        let server = NatsServer::start_config(
            &path,
            &[
                ("JETCODE_WORKER_PASSWORD", WORKER_PW),
                ("JETCODE_PRODUCER_PASSWORD", PRODUCER_PW),
                ("JETCODE_ADMIN_PASSWORD", ADMIN_PW),
            ],
        );
        Secure { server, dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `nats://127.0.0.1:<port>`, or with `userinfo@` in it.
    fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("nats://{u}@127.0.0.1:{}", self.server.port),
            None => self.server.url(),
        }
    }

    fn producer_url(&self) -> String {
        self.url(Some(&format!("producer:{PRODUCER_PW_IN_URL}")))
    }

    fn worker_url(&self) -> String {
        self.url(Some(&format!("worker:{WORKER_PW}")))
    }

    /// The TLS environment a client needs: the CA and its certificate.
    fn tls_env(&self) -> Vec<(String, String)> {
        let p = |f: &str| self.root().join(f).display().to_string();
        vec![
            ("NATS_CA".into(), p("ca.pem")),
            ("NATS_CERT".into(), p("client.pem")),
            ("NATS_KEY".into(), p("client-key.pem")),
        ]
    }

    /// Library options for `user` over TLS.
    fn opts(&self, user: &str, password: &str) -> jetcode::ConnectOptions {
        let mut o = jetcode::ConnectOptions::new(self.url(None));
        o.user = Some(user.into());
        o.password = Some(password.into());
        o.tls_ca = Some(self.root().join("ca.pem"));
        o.tls_cert = Some(self.root().join("client.pem"));
        o.tls_key = Some(self.root().join("client-key.pem"));
        o.tls_required = true;
        o
    }

    async fn js(&self, user: &str, password: &str) -> jetstream::Context {
        jetstream::new(self.opts(user, password).connect().await.expect("connect"))
    }

    /// Run `jetcode args` with exactly `env` as its NATS environment
    /// (nothing inherited); waits at most `deadline`.
    fn jetcode(&self, args: &[&str], env: &[(String, String)], deadline: Duration) -> Run {
        let n = self.runs();
        let out = self.root().join(format!("run{n}.out"));
        let err = self.root().join(format!("run{n}.err"));
        let mut cmd = Command::new(jetcode_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("NATS_") || k.starts_with("JETCODE_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("run jetcode");
        let status = wait_exit(&mut child, deadline, &format!("jetcode {args:?}"));
        Run {
            ok: status.success(),
            stdout: std::fs::read_to_string(out).unwrap(),
            stderr: std::fs::read_to_string(err).unwrap(),
        }
    }

    fn runs(&self) -> usize {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn env_as(&self, url: String) -> Vec<(String, String)> {
        let mut env = self.tls_env();
        env.push(("NATS_URL".into(), url));
        env
    }

    /// The server's log (permission violations are logged there).
    fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("nats.log")).unwrap_or_default()
    }

    /// Wait for the server to log that `user` of the JETCODE account was
    /// refused `kind` (Publish, Subscription) on `subject`.
    fn wait_violation(&self, user: &str, kind: &str, subject: &str) {
        self.wait_log(&format!(
            "\"JETCODE/user:{user}\" - {kind} Violation - Subject \"{subject}\""
        ));
    }

    fn wait_log(&self, what: &str) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !self.log().contains(what) {
            assert!(
                std::time::Instant::now() < end,
                "no {what:?} in the server log within 10 s:\n{}",
                self.log()
            );
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }

    /// `streams apply` as the admin, as an operator would.
    fn apply(&self) {
        let r = self.jetcode(
            &["streams", "apply"],
            &self.env_as(self.url(Some(&format!("admin:{ADMIN_PW}")))),
            Duration::from_secs(60),
        );
        assert!(r.ok, "streams apply as admin: {}", r.stderr);
    }

    fn job_file(&self, id: &str, src: &Path) -> PathBuf {
        let spec = serde_json::json!({
            "id": id,
            "source": format!("file://{}", src.display()),
            "output": format!("file://{}/out/{id}/", self.root().display()),
            "renditions": [{"name": "r120", "height": 120, "crf": 30, "preset": "ultrafast"}],
            "formats": ["mp4"],
            "segment_seconds": 2.0,
        });
        let path = self.root().join(format!("{id}.json"));
        std::fs::write(&path, spec.to_string()).unwrap();
        path
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// A failure told in exactly one line with none of `secrets` in it.
    fn refused(&self, what: &str, secrets: &[&str]) -> &str {
        assert!(!self.ok, "{what} succeeded: {}", self.stdout);
        let err = self.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{what}: not one line:\n{err}");
        for s in secrets {
            assert!(
                !err.contains(s),
                "{what}: the secret {s:?} is printed: {err}"
            );
        }
        err
    }
}

#[test]
fn refused_clients_get_one_line_without_secrets() {
    let s = Secure::start();

    let r = s.jetcode(&["jobs"], &s.env_as(s.url(None)), Duration::from_secs(30));
    let err = r.refused("no credentials", &[]);
    assert!(err.starts_with("error: cannot connect to NATS at"), "{err}");
    assert!(err.contains("authorization violation"), "{err}");
    assert!(err.contains("wants credentials"), "{err}");

    let r = s.jetcode(
        &["jobs"],
        &s.env_as(s.url(Some("producer:wr%40ng-pw"))),
        Duration::from_secs(30),
    );
    let err = r.refused("a wrong password in the URL", &["wr%40ng-pw", "wr@ng-pw"]);
    assert!(err.contains("authorization violation"), "{err}");
    assert!(err.contains("nats://producer:***@127.0.0.1"), "{err}");

    let mut env = s.env_as(s.url(None));
    env.push(("NATS_USER".into(), "producer".into()));
    env.push(("NATS_PASSWORD".into(), "wrong-pw".into()));
    let r = s.jetcode(&["jobs"], &env, Duration::from_secs(30));
    let err = r.refused("a wrong --password", &["wrong-pw"]);
    assert!(err.contains("credentials refused"), "{err}");

    // The worker's password is not the producer's.
    let r = s.jetcode(
        &["jobs"],
        &s.env_as(s.url(Some(&format!("producer:{WORKER_PW}")))),
        Duration::from_secs(30),
    );
    r.refused("another user's password", &[WORKER_PW]);

    // Without the CA the server's certificate is not trusted.
    let env = vec![
        ("NATS_URL".to_string(), s.producer_url()),
        (
            "NATS_CERT".into(),
            s.root().join("client.pem").display().to_string(),
        ),
        (
            "NATS_KEY".into(),
            s.root().join("client-key.pem").display().to_string(),
        ),
    ];
    let r = s.jetcode(&["jobs"], &env, Duration::from_secs(30));
    let err = r.refused("TLS without the CA", &[PRODUCER_PW, PRODUCER_PW_IN_URL]);
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("--tls-ca"), "{err}");

    // Without a client certificate the server refuses the handshake.
    let env = vec![
        ("NATS_URL".to_string(), s.producer_url()),
        (
            "NATS_CA".into(),
            s.root().join("ca.pem").display().to_string(),
        ),
    ];
    let r = s.jetcode(&["jobs"], &env, Duration::from_secs(30));
    let err = r.refused(
        "TLS without a client certificate",
        &[PRODUCER_PW, PRODUCER_PW_IN_URL],
    );
    assert!(err.contains("--tls-cert"), "{err}");

    // `--help` shows neither the URL's secret nor the password.
    let mut env = s.env_as(s.producer_url());
    env.push(("NATS_PASSWORD".into(), "help-secret".into()));
    let r = s.jetcode(&["--help"], &env, Duration::from_secs(30));
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("NATS_URL"), "{}", r.stdout);
    for secret in [PRODUCER_PW_IN_URL, "help-secret"] {
        assert!(
            !r.stdout.contains(secret),
            "--help shows {secret}: {}",
            r.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn url_credentials_and_tls_let_a_producer_in() {
    let s = Secure::start();
    s.apply();
    // Percent-encoded password in the URL, TLS from the environment.
    let r = s.jetcode(
        &["jobs"],
        &s.env_as(s.producer_url()),
        Duration::from_secs(30),
    );
    assert!(r.ok, "URL credentials: {}", r.stderr);

    // Explicit flags win over the URL's credentials.
    let mut env = s.env_as(s.url(Some("producer:stale")));
    env.push(("NATS_USER".into(), "producer".into()));
    env.push(("NATS_PASSWORD".into(), PRODUCER_PW.into()));
    let r = s.jetcode(&["jobs"], &env, Duration::from_secs(30));
    assert!(r.ok, "flags over URL: {}", r.stderr);

    // The library takes URL credentials too.
    let mut o = s.opts("x", "x");
    o.user = None;
    o.password = None;
    o.url = s.producer_url();
    o.connect().await.expect("library with URL credentials");
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_submits_and_cancels_but_cannot_pull_tasks() {
    let s = Secure::start();
    s.apply();
    let src = s.root().join("nowhere.mp4");
    let job = s.job_file("queued", &src);
    let env = s.env_as(s.producer_url());
    let r = s.jetcode(
        &["submit", job.to_str().unwrap()],
        &env,
        Duration::from_secs(30),
    );
    assert!(r.ok, "producer submit: {}", r.stderr);
    assert_eq!(r.stdout.trim(), "queued");

    let admin = s.js("admin", ADMIN_PW).await;
    let mut jobs = admin.get_stream("JETCODE_JOBS").await.unwrap();
    assert_eq!(jobs.info().await.unwrap().state.messages, 1, "submitted");

    // A task waits in the queue; the producer may not take it.
    admin
        .publish("jetcode.tasks.segment.queued", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let producer = s.opts("producer", PRODUCER_PW).connect().await.unwrap();
    let pull = producer
        .send_request(
            "$JS.API.CONSUMER.MSG.NEXT.JETCODE_TASKS.workers",
            async_nats::Request::new()
                .payload(r#"{"batch":1,"expires":1000000000}"#.into())
                .timeout(Some(Duration::from_secs(2))),
        )
        .await;
    assert!(pull.is_err(), "the producer pulled a task: {pull:?}");
    s.wait_violation(
        "producer",
        "Publish",
        "$JS.API.CONSUMER.MSG.NEXT.JETCODE_TASKS.workers",
    );
    let sub = producer.subscribe("jetcode.tasks.>").await.unwrap();
    drop(sub);
    s.wait_violation("producer", "Subscription", "jetcode.tasks.>");
    let info = admin
        .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            "workers",
            "JETCODE_TASKS",
        )
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        (
            info.num_pending,
            info.num_ack_pending,
            info.delivered.stream_sequence
        ),
        (1, 0, 0),
        "the task was never delivered"
    );

    // Cancel before planning: the job gets a cancelled record.
    let r = s.jetcode(&["cancel", "queued"], &env, Duration::from_secs(30));
    assert!(r.ok, "producer cancel: {}", r.stderr);
    let r = s.jetcode(
        &["status", "queued", "--json"],
        &env,
        Duration::from_secs(30),
    );
    assert!(r.ok, "producer status: {}", r.stderr);
    let rec: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rec["state"], "cancelled", "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_user_runs_a_producers_job_but_cannot_submit_or_see_other_accounts() {
    let s = Secure::start();
    s.apply();
    let src = s.root().join("in.mp4");
    make_clip(&src, 4.0, 320, 240);

    // Another account with its own jetcode topology and a queued job.
    let other = format!("other:{OTHER_PW}");
    let other_env = s.env_as(s.url(Some(&other)));
    let r = s.jetcode(&["streams", "apply"], &other_env, Duration::from_secs(60));
    assert!(r.ok, "apply in OTHER: {}", r.stderr);
    let other_job = s.job_file("theirs", &src);
    let r = s.jetcode(
        &["submit", other_job.to_str().unwrap()],
        &other_env,
        Duration::from_secs(30),
    );
    assert!(r.ok, "submit in OTHER: {}", r.stderr);

    // The worker runs as `worker`, TLS and URL credentials from the environment.
    let tls = s.tls_env();
    let env: Vec<(&str, &str)> = tls.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let worker_url = s.worker_url();
    let _worker = WorkerProc::start(&worker_url, "w1", s.root(), &[], &env);

    let job = s.job_file("mine", &src);
    let penv = s.env_as(s.producer_url());
    let r = s.jetcode(
        &["submit", job.to_str().unwrap(), "--wait"],
        &penv,
        Duration::from_secs(240),
    );
    let log = || std::fs::read_to_string(s.root().join("w1.log")).unwrap_or_default();
    assert!(r.ok, "submit --wait: {}\nworker log:\n{}", r.stderr, log());
    let r = s.jetcode(
        &["status", "mine", "--json"],
        &penv,
        Duration::from_secs(30),
    );
    assert!(r.ok, "{}", r.stderr);
    let rec: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rec["state"], "done", "{rec}");
    let mp4 = s.root().join("out/mine/r120.mp4");
    assert_eq!(ffprobe_frames(&mp4), ffprobe_frames(&src), "frames");
    let r = s.jetcode(&["workers", "--json"], &penv, Duration::from_secs(30));
    assert!(
        r.ok && r.stdout.contains("\"w1\""),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(
        !log().contains("Violation"),
        "the worker hit a permission it lacks:\n{}",
        log()
    );
    assert!(!s.log().contains("Violation"), "{}", s.log());

    // The worker may not submit.
    let admin = s.js("admin", ADMIN_PW).await;
    let before = admin
        .get_stream("JETCODE_JOBS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    let sneaky = s.job_file("sneaky", &src);
    let r = s.jetcode(
        &["submit", sneaky.to_str().unwrap()],
        &s.env_as(worker_url.clone()),
        Duration::from_secs(30),
    );
    assert!(!r.ok, "the worker submitted a job: {}", r.stdout);
    assert!(!r.stderr.contains(WORKER_PW), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("Permissions Violation for Publish to \"jetcode.jobs.submit\"")
            && r.stderr
                .contains("allowed to publish to jetcode.jobs.submit?"),
        "{}",
        r.stderr
    );
    s.wait_violation("worker", "Publish", "jetcode.jobs.submit");
    let after = admin
        .get_stream("JETCODE_JOBS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    assert_eq!(before, after, "nothing reached the jobs stream");

    // The other account's job was never seen by this account's worker.
    let r = s.jetcode(&["jobs", "--json"], &penv, Duration::from_secs(30));
    assert!(r.ok, "{}", r.stderr);
    assert!(!r.stdout.contains("theirs"), "{}", r.stdout);
    let mut o = s.opts("other", OTHER_PW);
    o.name = None;
    let theirs = jetstream::new(o.connect().await.unwrap());
    let planner = theirs
        .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            "planner",
            "JETCODE_JOBS",
        )
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        (planner.num_pending, planner.delivered.stream_sequence),
        (1, 0),
        "the other account's job stays queued there"
    );
}
