//! Just enough HTTP/1.0 to ask a local daemon whether it is alive.
//!
//! HTTP/1.0 keeps this tiny: the server closes the connection after one response and never uses
//! chunked encoding, so "read to the end, split at the blank line" is a complete client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET path` over the Unix socket at `sock` (Docker's API).
pub fn get_unix(sock: &Path, path: &str, timeout: Duration) -> io::Result<Response> {
    let stream = UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    get(stream, "docker", path)
}

/// `GET path` over TCP (Caddy's admin API). The Host header must name the listen address,
/// because Caddy's admin endpoint rejects other hosts to defeat DNS rebinding.
pub fn get_tcp(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    get(stream, &addr.to_string(), path)
}

fn get(mut stream: impl Read + Write, host: &str, path: &str) -> io::Result<Response> {
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: otturnaut-xtask\r\nAccept: */*\r\n\r\n")?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let status =
        status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP response: {status_line:?}"))
        })?;
    Ok(Response { status, body: body.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nOK").expect("parses");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "OK");
    }

    #[test]
    fn rejects_non_http() {
        assert!(parse(b"SSH-2.0-OpenSSH_9.2\r\n").is_err());
    }
}
