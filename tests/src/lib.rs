//! Test support: start real Flotilla processes and talk to them through real
//! clients. Every server binds port 0 on 127.0.0.1 and is killed on drop.

pub mod answers;
pub mod chaos;
pub mod cluster;
pub mod pgraw;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `../shared` beside the repository: TPC-H queries and reference answers.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("FLOTILLA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("..").join("shared"))
}

/// The `flotilla` binary under test: `FLOTILLA_BIN`, else the one cargo built
/// beside this test binary.
pub fn flotilla_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLOTILLA_BIN") {
        return PathBuf::from(bin);
    }
    let bin = profile_dir().join("flotilla");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --bin flotilla) or set FLOTILLA_BIN",
        bin.display()
    );
    bin
}

/// A data directory shared by the tests of one build, so TPC-H data is generated
/// once (generation is safe against concurrent starts).
pub fn shared_data_dir() -> PathBuf {
    let dir = profile_dir().join("flotilla-test-data");
    std::fs::create_dir_all(&dir).expect("create test data dir");
    dir
}

/// `target/<profile>`: where cargo put this executable (tests live one level
/// down, in `deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Resident memory of a process, from `/proc/PID/status`: (current, peak) in MiB.
pub fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}
