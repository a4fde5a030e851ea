//! Tables in an S3-compatible object store (a real server: moto, from PyPI). The
//! coordinator hands the store settings to executors when they register, and the
//! scan runs on the executors.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tests::cluster::{simple_rows, sqlstate, Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct S3Server {
    child: Child,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_s3() -> Result<S3Server> {
    let port = free_port()?;
    let mut command = Command::new("python3");
    command
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .context("starting moto (pip install 'moto[server]')")?;
    let server = S3Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the S3 server did not listen on {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

/// A plain HTTP PUT (the test server accepts unsigned requests).
async fn put(port: u16, path: &str, body: &[u8]) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        bail!("PUT {path} failed: {}", text.lines().next().unwrap_or(""));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_in_s3_are_scanned_by_executors() -> Result<()> {
    let s3 = start_s3().await?;
    put(s3.port, "/flotilla-test", b"").await?;
    put(
        s3.port,
        "/flotilla-test/people/part-1.csv",
        b"id,name,age\n1,ann,31\n2,bob,\n",
    )
    .await?;
    put(
        s3.port,
        "/flotilla-test/people/part-2.csv",
        b"id,name,age\n3,cy,45\n",
    )
    .await?;

    let dir = tempfile::Builder::new().prefix("flotilla-s3-").tempdir()?;
    let config = format!(
        "[coordinator]\ndata_roots = [\"{}\", \"s3://flotilla-test/\"]\n\
         [object_store.s3]\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"test\"\nsecret_access_key = \"test\"\nallow_http = true\n",
        dir.path().display(),
        s3.port
    );
    let cluster = Cluster::standalone(ClusterOptions {
        executors: 2,
        tpch: None,
        config: Some(config),
        data_dir: Some(dir.path().to_path_buf()),
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    client
        .simple_query(
            "CREATE EXTERNAL TABLE people (id BIGINT, name VARCHAR, age INT) STORED AS CSV \
             LOCATION 's3://flotilla-test/people/' OPTIONS ('format.has_header' 'true')",
        )
        .await?;
    let before = cluster.tasks_by_executor(&client).await?;
    let rows = simple_rows(&client, "select count(*), sum(age) from people").await?;
    assert_eq!(
        rows,
        vec![vec![Some("3".to_string()), Some("76".to_string())]]
    );
    let after = cluster.tasks_by_executor(&client).await?;
    let busy = after
        .iter()
        .zip(&before)
        .filter(|((_, a), (_, b))| a > b)
        .count();
    assert!(busy >= 1, "no executor scanned S3: {before:?} -> {after:?}");

    let err = client
        .simple_query("CREATE EXTERNAL TABLE other STORED AS CSV LOCATION 's3://elsewhere/x/'")
        .await
        .expect_err("bucket outside the data roots");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
    Ok(())
}
