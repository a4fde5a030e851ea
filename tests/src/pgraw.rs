//! A raw Postgres v3 protocol client for inputs no driver will send (bytes that
//! are not UTF-8, unknown statement names).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawConnection {
    stream: TcpStream,
    /// What the server sent during start-up, ReadyForQuery included.
    pub startup: Vec<Message>,
}

/// One backend message: its type byte and body.
#[derive(Debug)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    /// `(name, value)` of a ParameterStatus message.
    pub fn parameter(&self) -> Option<(String, String)> {
        if self.tag != b'S' {
            return None;
        }
        let mut parts = self.body.split(|b| *b == 0);
        let name = String::from_utf8_lossy(parts.next()?).to_string();
        let value = String::from_utf8_lossy(parts.next()?).to_string();
        Some((name, value))
    }

    /// The transaction status byte of a ReadyForQuery message.
    pub fn ready_status(&self) -> Option<u8> {
        (self.tag == b'Z')
            .then(|| self.body.first().copied())
            .flatten()
    }

    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        if self.tag != b'E' {
            return None;
        }
        let mut fields = self.body.split(|b| *b == 0);
        fields.find_map(|f| {
            if f.first() == Some(&b'C') {
                Some(String::from_utf8_lossy(&f[1..]).to_string())
            } else {
                None
            }
        })
    }
}

impl RawConnection {
    /// Connects and completes start-up (no authentication).
    pub async fn connect(port: u16) -> Result<Self> {
        Ok(Self::connect_after(port, &[]).await?.0)
    }

    /// Sends each negotiation request (SSLRequest 80877103, GSSENCRequest
    /// 80877104) and reads its one-byte answer, then completes start-up.
    pub async fn connect_after(port: u16, requests: &[i32]) -> Result<(Self, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut answers = Vec::new();
        for code in requests {
            let mut msg = BytesMut::new();
            msg.put_i32(8);
            msg.put_i32(*code);
            stream.write_all(&msg).await?;
            answers.push(stream.read_u8().await?);
        }
        let mut conn = Self {
            stream,
            startup: Vec::new(),
        };
        let mut body = BytesMut::new();
        body.put_i32(196_608);
        for (k, v) in [("user", "flotilla"), ("database", "flotilla")] {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut msg = BytesMut::new();
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(&body);
        conn.stream.write_all(&msg).await?;
        conn.startup = conn.until_ready().await?;
        Ok((conn, answers))
    }

    /// Sends a message with a type byte.
    pub async fn send(&mut self, tag: u8, body: &[u8]) -> Result<()> {
        let mut msg = BytesMut::with_capacity(body.len() + 5);
        msg.put_u8(tag);
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(body);
        self.stream.write_all(&msg).await?;
        Ok(())
    }

    /// Sends a simple Query whose text is `sql` as raw bytes.
    pub async fn query_bytes(&mut self, sql: &[u8]) -> Result<Vec<Message>> {
        let mut body = sql.to_vec();
        body.push(0);
        self.send(b'Q', &body).await?;
        self.until_ready().await
    }

    /// Reads messages up to and including ReadyForQuery.
    pub async fn until_ready(&mut self) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.read())
                .await
                .context("no ReadyForQuery within 30 s")??;
            let done = msg.tag == b'Z';
            out.push(msg);
            if done {
                return Ok(out);
            }
        }
    }

    async fn read(&mut self) -> Result<Message> {
        let tag = self.stream.read_u8().await?;
        let len = self.stream.read_i32().await?;
        if !(4..=64 * 1024 * 1024).contains(&len) {
            bail!("bad message length {len}");
        }
        let mut body = vec![0; len as usize - 4];
        self.stream.read_exact(&mut body).await?;
        Ok(Message { tag, body })
    }
}
