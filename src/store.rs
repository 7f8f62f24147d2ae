//! Where files may be read and written: `file://` URLs confined to the
//! worker's configured roots, and atomic, durable placement of outputs.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

pub mod s3;

/// The directories a worker may read sources from and write outputs to.
#[derive(Debug, Clone)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
}

fn storage(msg: String) -> Error {
    Error::new(ErrorKind::Storage, msg)
}

impl FileRoots {
    /// Canonicalise the roots; each must exist.
    pub fn new(roots: &[PathBuf]) -> Result<Self> {
        let mut out = Vec::new();
        for r in roots {
            let c = r
                .canonicalize()
                .map_err(|e| storage(format!("file root {}: {e}", r.display())))?;
            out.push(c);
        }
        if out.is_empty() {
            return Err(storage("no file roots configured".into()));
        }
        Ok(FileRoots { roots: out })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn url_path(url: &str) -> Result<PathBuf> {
        let u = url::Url::parse(url).map_err(|e| storage(format!("{url:?}: {e}")))?;
        if u.scheme() != "file" {
            return Err(storage(format!(
                "{url}: scheme {} not supported by this worker",
                u.scheme()
            )));
        }
        let p = u
            .to_file_path()
            .map_err(|_| storage(format!("{url}: not a local file path")))?;
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(storage(format!("{url}: '..' is not allowed")));
        }
        Ok(p)
    }

    fn check_inside(&self, url: &str, real: &Path) -> Result<()> {
        if self.roots.iter().any(|r| real.starts_with(r)) {
            Ok(())
        } else {
            Err(storage(format!(
                "{url} is outside the worker's file roots ({})",
                self.roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }

    /// The deepest existing ancestor of `p`, symlinks resolved.
    fn real_ancestor(&self, url: &str, p: &Path) -> Result<PathBuf> {
        let mut existing = p;
        while !existing.exists() {
            existing = existing
                .parent()
                .ok_or_else(|| storage(format!("{url} has no existing ancestor")))?;
        }
        existing
            .canonicalize()
            .map_err(|e| storage(format!("{url}: {e}")))
    }

    /// The local path of a source; it must exist and (symlinks resolved) lie under a root.
    pub fn source_path(&self, url: &str) -> Result<PathBuf> {
        let p = Self::url_path(url)?;
        let real = match p.canonicalize() {
            Ok(real) => real,
            Err(e) => {
                // Outside the roots says "outside" whether or not it
                // exists: no probing for files elsewhere.
                self.check_inside(url, &self.real_ancestor(url, &p)?)?;
                return Err(storage(format!("source {url}: {e}")));
            }
        };
        self.check_inside(url, &real)?;
        if !real.is_file() {
            return Err(storage(format!("source {url} is not a regular file")));
        }
        Ok(real)
    }

    /// The local directory of an output, created if missing, under a root.
    pub fn output_dir(&self, url: &str) -> Result<PathBuf> {
        let p = Self::url_path(url)?;
        // Check the deepest existing ancestor (symlinks resolved) before
        // creating anything, so nothing is created outside the roots.
        self.check_inside(url, &self.real_ancestor(url, &p)?)?;
        std::fs::create_dir_all(&p).map_err(|e| storage(format!("output {url}: {e}")))?;
        let real = p
            .canonicalize()
            .map_err(|e| storage(format!("output {url}: {e}")))?;
        self.check_inside(url, &real)?;
        Ok(real)
    }
}

/// The local path of a `file://` URL with symlinks resolved as far as it
/// exists (the rest appended as written); None for anything else. Creates
/// nothing.
pub fn local_path(url: &str) -> Option<PathBuf> {
    let p = FileRoots::url_path(url).ok()?;
    let mut existing = p.as_path();
    while !existing.exists() {
        existing = existing.parent()?;
    }
    let rest = p.strip_prefix(existing).ok()?;
    Some(existing.canonicalize().ok()?.join(rest))
}

/// Where a `file://` or `s3://` URL points, comparable with [`overlap`]:
/// the resolved local path, or `s3:/<bucket>/<key>` (a relative path whose
/// components are the bucket and the key's segments, so it never meets a
/// local path). None for anything else.
pub fn location(url: &str) -> Option<PathBuf> {
    crate::job::s3_location(url).or_else(|| local_path(url))
}

/// How directory `a` overlaps directory `b`: `"is"` (the same), `"lies
/// inside"` or `"contains"`; None when neither holds the other.
/// Component-wise, so `/out/a` and `/out/ab` do not overlap.
pub fn overlap(a: &Path, b: &Path) -> Option<&'static str> {
    if a == b {
        Some("is")
    } else if a.starts_with(b) {
        Some("lies inside")
    } else if b.starts_with(a) {
        Some("contains")
    } else {
        None
    }
}

/// A sibling temp path for writing `dest` before [`commit_file`].
pub fn partial_path(dest: &Path, tag: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial-{tag}"))
}

/// Make `tmp` durable and move it to `dest` unless `dest` exists: the
/// first writer wins. Returns false (and removes `tmp`) when an earlier
/// copy was already there. For checkpointed parts: a late duplicate of a
/// task must never replace a part that was checkpointed, stitched and
/// hashed. `link(2)` fails atomically on an existing name, on every
/// filesystem, unlike a rename.
pub fn commit_file_once(tmp: &Path, dest: &Path) -> Result<bool> {
    let io = |what: &str, e: std::io::Error| storage(format!("{what} {}: {e}", dest.display()));
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("sync", e))?;
    let placed = match std::fs::hard_link(tmp, dest) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io("link to", e)),
    };
    let _ = std::fs::remove_file(tmp);
    if let Some(dir) = dest.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(placed)
}

/// Size and SHA-256 (hex) of a file, read in 1 MiB blocks.
pub fn digest_file(path: &Path) -> Result<(u64, String)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| storage(format!("read {}: {e}", path.display())))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| storage(format!("read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Make `tmp` durable and atomically move it to `dest`.
pub fn commit_file(tmp: &Path, dest: &Path) -> Result<()> {
    let io = |what: &str, e: std::io::Error| storage(format!("{what} {}: {e}", dest.display()));
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("sync", e))?;
    std::fs::rename(tmp, dest).map_err(|e| io("rename to", e))?;
    if let Some(dir) = dest.parent() {
        // Persist the rename itself.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn s3_locations_compare_by_bucket_and_key_segments() {
        use super::{location, overlap};
        let l = |u: &str| location(u).unwrap();
        assert_eq!(overlap(&l("s3://b/out/a/"), &l("s3://b/out/a")), Some("is"));
        assert_eq!(
            overlap(&l("s3://b/out/a/x/"), &l("s3://b/out/a/")),
            Some("lies inside")
        );
        assert_eq!(
            overlap(&l("s3://b/out/"), &l("s3://b/out/a/")),
            Some("contains")
        );
        assert_eq!(overlap(&l("s3://b/out/ab/"), &l("s3://b/out/a/")), None);
        assert_eq!(overlap(&l("s3://c/out/a/"), &l("s3://b/out/a/")), None);
        assert_eq!(
            overlap(&l("s3://b/"), &std::path::PathBuf::from("/b")),
            None
        );
    }

    use super::*;

    /// Every way out of the roots we know of, and what each gets.
    #[test]
    fn traversal_table() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let r = root.path().display().to_string();
        std::fs::write(root.path().join("in.mp4"), b"x").unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(other.path().join("secret.mp4"), b"x").unwrap();
        std::os::unix::fs::symlink(other.path(), root.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(
            other.path().join("secret.mp4"),
            root.path().join("link.mp4"),
        )
        .unwrap();
        let roots = FileRoots::new(&[root.path().to_path_buf()]).unwrap();
        let o = other.path().display().to_string();
        let on = other.path().file_name().unwrap().to_string_lossy();
        // (url, error substring; "" = accepted)
        let sources = [
            (format!("file://{r}/in.mp4"), ""),
            // Url resolves dot segments before the path is looked at: this
            // one stays inside (the spec's own check refuses any '..').
            (format!("file://{r}/sub/../in.mp4"), ""),
            (format!("file://{r}/../{on}/secret.mp4"), "outside"),
            (format!("file://{r}/%2e%2e/%2e%2e/etc/passwd"), "outside"),
            (format!("file://{r}/%2E%2e/x"), "outside"),
            (format!("file://{r}/.%2e/x"), "outside"),
            (
                format!("file://{r}/sub/..%2f..%2fetc%2fpasswd"),
                "'..' is not allowed",
            ),
            (format!("file://{r}/sub\\..\\..\\etc\\passwd"), "outside"),
            (format!("file://{r}/sub/%252e%252e/in.mp4"), "No such file"),
            (format!("file://{r}/missing.mp4"), "No such file"),
            (format!("file://{o}/missing.mp4"), "outside"),
            ("file:///etc/passwd".to_string(), "outside"),
            (format!("file://{o}/secret.mp4"), "outside"),
            (format!("file://{r}/link.mp4"), "outside"),
            (format!("file://{r}/escape/secret.mp4"), "outside"),
            (format!("file://{r}/in.mp4%00.txt"), "nul byte"),
            (
                format!("file://otherhost{r}/in.mp4"),
                "not a local file path",
            ),
            (format!("file://{r}/sub"), "not a regular file"),
            ("s3://bucket/x.mp4".to_string(), "scheme s3"),
            ("/etc/passwd".to_string(), "relative URL"),
            ("file:".to_string(), "outside"),
        ];
        let outputs = [
            (format!("file://{r}/out/a/"), ""),
            (format!("file://{r}/out/../../x/"), "outside"),
            (format!("file://{r}/%2e%2e/x/"), "outside"),
            (format!("file://{r}/escape/out/"), "outside"),
            (format!("file://{o}/out/"), "outside"),
            ("file:///proc/self/".to_string(), "outside"),
        ];
        let mut wrong = Vec::new();
        let mut check = |what: &str, url: &str, want: &str, got: Result<PathBuf>| {
            let ok = match &got {
                Ok(_) => want.is_empty(),
                Err(e) => {
                    let e = e.to_string();
                    !want.is_empty()
                        && e.to_lowercase().contains(&want.to_lowercase())
                        && !e.contains('\n')
                }
            };
            if !ok {
                wrong.push(format!("{what} {url}: wanted {want:?}, got {got:?}"));
            }
        };
        for (url, want) in &sources {
            check("source", url, want, roots.source_path(url));
        }
        for (url, want) in &outputs {
            check("output", url, want, roots.output_dir(url));
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(
            !other.path().join("out").exists(),
            "nothing created outside"
        );
        assert!(!root.path().parent().unwrap().join("x").exists());
    }

    #[test]
    fn overlaps() {
        let p = Path::new;
        assert_eq!(overlap(p("/o/a"), p("/o/a")), Some("is"));
        assert_eq!(overlap(p("/o/a/b"), p("/o/a")), Some("lies inside"));
        assert_eq!(overlap(p("/o"), p("/o/a")), Some("contains"));
        assert_eq!(overlap(p("/o/a"), p("/o/ab")), None);
        assert_eq!(overlap(p("/o/a"), p("/o/b")), None);
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&real, real.join("alias")).unwrap();
        let url = format!("file://{}/alias/not/yet/", real.display());
        assert_eq!(local_path(&url), Some(real.join("not/yet")));
        assert!(!real.join("not").exists(), "creates nothing");
        assert_eq!(local_path("s3://b/k"), None);
    }

    #[test]
    fn confinement() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("in.mp4"), b"x").unwrap();
        std::fs::write(other.path().join("secret.mp4"), b"x").unwrap();
        std::os::unix::fs::symlink(
            other.path().join("secret.mp4"),
            root.path().join("link.mp4"),
        )
        .unwrap();
        let roots = FileRoots::new(&[root.path().to_path_buf()]).unwrap();
        let url = |p: &Path| format!("file://{}", p.display());

        assert!(roots.source_path(&url(&root.path().join("in.mp4"))).is_ok());
        let e = roots
            .source_path(&url(&other.path().join("secret.mp4")))
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = roots
            .source_path(&url(&root.path().join("link.mp4")))
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "symlink escape: {e}");
        // First writer wins: a second commit keeps the first file.
        let dest = root.path().join("part.ts");
        std::fs::write(root.path().join("a.tmp"), b"first").unwrap();
        std::fs::write(root.path().join("b.tmp"), b"second").unwrap();
        assert!(commit_file_once(&root.path().join("a.tmp"), &dest).unwrap());
        assert!(!commit_file_once(&root.path().join("b.tmp"), &dest).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        assert!(!root.path().join("b.tmp").exists(), "loser's temp removed");
        assert_eq!(digest_file(&dest).unwrap().0, 5);
        let e = roots
            .source_path(&format!("{}/../x", url(root.path())))
            .unwrap_err();
        assert!(
            e.to_string().contains("outside") || e.to_string().contains(".."),
            "{e}"
        );
        let e = roots.source_path("s3://bucket/x.mp4").unwrap_err();
        assert!(e.to_string().contains("scheme"), "{e}");

        let out = roots
            .output_dir(&url(&root.path().join("out/job1/")))
            .unwrap();
        assert!(out.is_dir());
        let e = roots
            .output_dir(&url(&other.path().join("out/")))
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(
            !other.path().join("out").exists(),
            "nothing created outside roots"
        );
    }
}
