//! Input hardening against the running system: a real nats-server and a
//! real worker refuse bad input with one-line reasons and keep serving.

mod common;

use std::time::Duration;

use common::*;
use jetcode::{EventKind, JobState};

fn small(name: &str, height: u32) -> serde_json::Value {
    serde_json::json!({"name": name, "height": height, "crf": 26, "preset": "ultrafast"})
}

/// The recorded reason of a job that must fail.
async fn failure(f: &Fixture, id: &str) -> String {
    let err = f
        .client
        .wait(id, Some(Duration::from_secs(120)))
        .await
        .expect_err(id);
    assert_eq!(err.kind(), jetcode::ErrorKind::JobFailed, "{id}: {err}");
    let reason = f.client.status(id).await.unwrap().error.unwrap_or_default();
    assert!(!reason.contains('\n'), "{id}: one line: {reason}");
    assert!(
        reason.len() <= jetcode::record::MAX_REASON_BYTES,
        "{id}: {} bytes",
        reason.len()
    );
    reason
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_reason_and_the_planner_keeps_serving() {
    let f = Fixture::new().await;
    let root = f.root().display().to_string();
    // Stitches take 5 s longer, so job a is surely still running when the
    // specs that overlap its output are planned.
    let _w = WorkerProc::start(
        &f.server.url(),
        "w",
        f.root(),
        &["--max-width", "320"],
        &[("JETCODE_FAILPOINT_SLOW", "stitch:5")],
    );
    std::fs::create_dir(f.root().join("media")).unwrap();
    let src = f.clip("media/in.mp4", 20.0, 320, 240);
    let wide = f.clip("wide.mp4", 2.0, 640, 360);

    // A long-running job whose output others must not touch.
    let a = f.spec("a", &src, serde_json::json!([small("r120", 120)]), 2.0);
    f.client.submit(&a).await.unwrap();
    f.wait_event("a", "job a planned", |k| {
        matches!(k, EventKind::Planned { .. })
    })
    .await;

    let spec_with = |id: &str, source: String, output: String| {
        serde_json::json!({
            "id": id,
            "source": source,
            "output": output,
            "renditions": [small("r120", 120)],
            "segment_seconds": 2.0,
        })
    };
    let src_url = format!("file://{}", src.display());
    // Inside, and around, job a's output while a runs.
    let inside = spec_with(
        "inside",
        src_url.clone(),
        format!("file://{root}/out/a/nested/"),
    );
    let around = spec_with("around", src_url.clone(), format!("file://{root}/out/"));
    for s in [&inside, &around] {
        let spec: jetcode::JobSpec = serde_json::from_value(s.clone()).unwrap();
        f.client.submit(&spec).await.unwrap();
    }
    // Over this worker's media limits.
    f.client
        .submit(&f.spec("wide", &wide, serde_json::json!(["h264-240p"]), 2.0))
        .await
        .unwrap();
    // The client refuses an output holding the source; a raw publish gets
    // the same from the planner, and so does an alias through a symlink.
    let holds = spec_with("holds", src_url.clone(), format!("file://{root}/media/"));
    let holds_spec: jetcode::JobSpec = serde_json::from_value(holds.clone()).unwrap();
    let e = f.client.submit(&holds_spec).await.unwrap_err();
    assert!(e.to_string().contains("output contains the source"), "{e}");
    std::os::unix::fs::symlink(f.root().join("media"), f.root().join("alias")).unwrap();
    let aliased = spec_with("aliased", src_url.clone(), format!("file://{root}/alias/"));
    let nc = f.client.nats();
    let raw = |v: &serde_json::Value| serde_json::to_vec(v).unwrap();
    let mut raws: Vec<(String, Vec<u8>)> = vec![
        ("holds".into(), raw(&holds)),
        ("aliased".into(), raw(&aliased)),
    ];
    // Traversal, plain and percent-encoded, and a symlink out of the root.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.mp4"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), f.root().join("escape")).unwrap();
    for (id, source) in [
        ("dotdot", format!("file://{root}/media/../../etc/passwd")),
        ("pct", format!("file://{root}/%2e%2E/%2e%2e/etc/passwd")),
        ("abs", "file:///etc/passwd".to_string()),
        ("symlink", format!("file://{root}/escape/secret.mp4")),
    ] {
        raws.push((
            id.into(),
            raw(&spec_with(id, source, format!("file://{root}/out/{id}/"))),
        ));
    }
    // Malformed: input-sized garbage in a field, not JSON, absurd numbers.
    raws.push((
        "echo".into(),
        raw(&serde_json::json!({
            "id": "echo", "source": src_url, "output": format!("file://{root}/out/echo/"),
            "renditions": ["x".repeat(60_000)],
        })),
    ));
    raws.push((
        "huge-height".into(),
        raw(&serde_json::json!({
            "id": "huge-height", "source": src_url, "output": format!("file://{root}/out/hh/"),
            "renditions": [{"name": "r", "height": u64::MAX, "crf": 20}],
        })),
    ));
    for (_, body) in &raws {
        nc.request(jetcode::subjects::JOBS_SUBMIT, body.clone().into())
            .await
            .unwrap();
    }
    let not_json = nc
        .request(jetcode::subjects::JOBS_SUBMIT, "{{{ not json".into())
        .await
        .unwrap();
    let ack: serde_json::Value = serde_json::from_slice(&not_json.payload).unwrap();
    let not_json_id = format!("job-{}", ack["seq"]);

    // The planner kept serving: a good job behind all of them completes.
    let good_src = f.clip("good.mp4", 2.0, 320, 240);
    f.client
        .submit(&f.spec(
            "good",
            &good_src,
            serde_json::json!([small("r120", 120)]),
            2.0,
        ))
        .await
        .unwrap();
    let rec = f
        .client
        .wait("good", Some(Duration::from_secs(180)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);

    let expect = [
        (
            "wide",
            "picture 640x360 exceeds 320x8192 (--max-width/--max-height)",
        ),
        ("inside", "lies inside the output of running job a"),
        ("around", "contains the output of running job a"),
        ("holds", "output contains the source"),
        ("aliased", "contains the source"),
        ("dotdot", "must not contain '..'"),
        ("pct", "must not contain '..'"),
        ("abs", "outside the worker's file roots"),
        ("symlink", "outside the worker's file roots"),
        ("echo", "unknown preset"),
        ("huge-height", "not a job spec"),
        (not_json_id.as_str(), "not a job spec"),
    ];
    for (id, want) in expect {
        let reason = failure(&f, id).await;
        eprintln!("{id}: {reason}");
        assert!(reason.contains(want), "{id}: {reason} lacks {want}");
    }
    assert!(failure(&f, "echo").await.contains("bytes cut]"));
    assert!(
        !f.out("a").join("nested").exists(),
        "nothing created in a's output"
    );
    // Job a was never disturbed.
    let rec = f
        .client
        .wait("a", Some(Duration::from_secs(180)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
}
