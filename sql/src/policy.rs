//! Data-root policy: table locations must lie inside configured roots.
//!
//! Local paths are resolved the way the operating system would open them (symbolic
//! links followed, `..` applied) before they are compared, so neither `..` nor a link
//! can lead outside a root. Object-store URLs are compared as normalized prefixes.

use std::path::{Component, Path, PathBuf};

use crate::error::{Result, SqlError};

#[derive(Debug, Clone)]
enum Root {
    Local(PathBuf),
    Url(String),
}

/// The set of places table data may come from.
#[derive(Debug, Clone)]
pub struct DataRoots {
    roots: Vec<Root>,
}

impl DataRoots {
    /// Builds the policy; local roots are resolved now (missing ones are created).
    pub fn new(roots: &[String]) -> Result<Self> {
        let mut out = Vec::new();
        for root in roots {
            if let Some(url) = object_store_url(root) {
                let mut prefix = url;
                if !prefix.ends_with('/') {
                    prefix.push('/');
                }
                out.push(Root::Url(prefix));
            } else {
                let path = PathBuf::from(root.strip_prefix("file://").unwrap_or(root));
                std::fs::create_dir_all(&path).map_err(|e| SqlError::io(&path, e))?;
                let resolved = resolve_local(&path)?;
                out.push(Root::Local(resolved));
            }
        }
        Ok(Self { roots: out })
    }

    /// Returns the location in the form tables should use, or an error if it lies
    /// outside every root.
    pub fn check(&self, location: &str) -> Result<String> {
        let refused = || SqlError::LocationOutsideDataRoots {
            location: location.to_string(),
        };
        if let Some(url) = object_store_url(location) {
            if url.split('/').any(|seg| seg == "..") {
                return Err(refused());
            }
            let inside = self.roots.iter().any(|root| match root {
                Root::Url(prefix) => {
                    url.starts_with(prefix.as_str()) || format!("{url}/") == *prefix
                }
                Root::Local(_) => false,
            });
            return if inside { Ok(url) } else { Err(refused()) };
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(refused());
        }
        let raw = location.strip_prefix("file://").unwrap_or(location);
        let resolved = resolve_local(Path::new(raw))?;
        let inside = self.roots.iter().any(|root| match root {
            Root::Local(dir) => resolved.starts_with(dir),
            Root::Url(_) => false,
        });
        if !inside {
            return Err(refused());
        }
        let mut text = resolved.display().to_string();
        // Keep a trailing slash: DataFusion reads a directory only when told it is one.
        if (raw.ends_with('/') || resolved.is_dir()) && !text.ends_with('/') {
            text.push('/');
        }
        Ok(text)
    }
}

/// `Some(normalized url)` for object-store URLs (`s3://`, `gs://`, `az://`, `http(s)://`...).
fn object_store_url(location: &str) -> Option<String> {
    let (scheme, rest) = location.split_once("://")?;
    if scheme.eq_ignore_ascii_case("file") {
        return None;
    }
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), rest))
}

/// Resolves a local path: absolute, links followed for the part that exists, `..`
/// applied lexically only where nothing exists to follow.
fn resolve_local(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| SqlError::io(".", e))?
            .join(path)
    };
    // Find the longest prefix that exists and canonicalize it.
    let mut existing = absolute.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(canonical) => {
                let mut out = canonical;
                for part in rest.iter().rev() {
                    if part == ".." {
                        out.pop();
                    } else if part != "." {
                        out.push(part);
                    }
                }
                return Ok(out);
            }
            Err(_) => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    // `..` at the end, or the root itself is missing: resolve lexically.
                    return Ok(lexical(&absolute));
                };
                rest.push(name);
                if !existing.pop() {
                    return Ok(lexical(&absolute));
                }
            }
        }
    }
}

fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("t")).unwrap();
        let roots = DataRoots::new(&[root.display().to_string()]).unwrap();
        assert!(roots.check(&root.join("t").display().to_string()).is_ok());
        assert!(roots.check("/etc/passwd").is_err());
        let escape = format!("{}/t/../../x", root.display());
        assert!(roots.check(&escape).is_err());
        assert!(roots.check("s3://bucket/x").is_err());
    }

    #[test]
    fn symlink_escape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let roots = DataRoots::new(&[root.display().to_string()]).unwrap();
        assert!(roots
            .check(&format!("{}/link/passwd", root.display()))
            .is_err());
    }

    #[test]
    fn url_roots_match_by_prefix() {
        let roots = DataRoots::new(&["s3://bucket/data".to_string()]).unwrap();
        assert!(roots.check("s3://bucket/data/t/").is_ok());
        assert!(roots.check("S3://bucket/data/t/").is_ok());
        assert!(roots.check("s3://bucket/database/").is_err());
        assert!(roots.check("s3://bucket/data/../x").is_err());
        assert!(roots.check("/tmp").is_err());
    }
}
