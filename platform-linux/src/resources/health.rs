//! Health checks of `exec` services: a command, a TCP connect, an HTTP GET.
//!
//! The HTTP check is a deliberately tiny HTTP/1.0 client (one GET, read the status line): a
//! health probe needs nothing more, and a full HTTP stack would be a large dependency for it.
//! `https://` URLs are refused when the resource is validated.

use std::path::Path;
use std::time::Duration;

use tandem_core::group::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::process::{self, Capture};

/// A short description for messages: "tcp 127.0.0.1:8080", "http http://…", ...
pub(crate) fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::ProcessAlive => "process-alive".into(),
        HealthCheck::Command { command } => format!("command {}", command.join(" ")),
        HealthCheck::Tcp { host, port } => {
            format!("tcp {}:{port}", host.as_deref().unwrap_or("127.0.0.1"))
        }
        HealthCheck::Http { url } => format!("http {url}"),
    }
}

/// Runs one check (not `ProcessAlive`, which the runner answers itself) within `limit`.
pub(crate) async fn check(check: &HealthCheck, log: &Path, limit: Duration) -> Result<(), String> {
    let work = async {
        match check {
            HealthCheck::ProcessAlive => Ok(()),
            HealthCheck::Command { command } => command_check(command, log, limit).await,
            HealthCheck::Tcp { host, port } => {
                let host = host.as_deref().unwrap_or("127.0.0.1");
                TcpStream::connect((host, *port))
                    .await
                    .map(drop)
                    .map_err(|error| format!("connect to {host}:{port}: {error}"))
            }
            HealthCheck::Http { url } => http_get(url).await,
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "health check {} timed out after {} ms",
            describe(check),
            limit.as_millis()
        )),
    }
}

async fn command_check(command: &[String], log: &Path, limit: Duration) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("the health command is empty".into());
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let what = format!("health command {program}");
    let ran = process::run(cmd, &what, Capture::Log(log), limit).await?;
    if ran.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed: {}", ran.describe()))
    }
}

/// The parts of an `http://host[:port]/path` URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    /// As written in the URL (brackets kept for IPv6), for the Host header.
    pub authority: String,
    /// Without brackets, for connecting.
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses an `http://` URL; `https://` and anything else is refused with the reason.
pub(crate) fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            format!("health check URL {url}: https is not supported; use http:// or a tcp check")
        } else {
            format!("health check URL {url} must start with http://")
        }
    })?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let bad = |why: &str| format!("health check URL {url}: {why}");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("expected http://HOST[:PORT]/PATH"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().map_err(|_| bad("bad port"))?,
        None => 80,
    };
    if host.is_empty() || port == 0 {
        return Err(bad("expected http://HOST[:PORT]/PATH"));
    }
    Ok(HttpUrl {
        authority: authority.to_string(),
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// One `GET`; Ok when the status is 2xx.
async fn http_get(url: &str) -> Result<(), String> {
    let parsed = parse_http_url(url)?;
    let mut stream = TcpStream::connect((parsed.host.as_str(), parsed.port))
        .await
        .map_err(|error| format!("GET {url}: connect: {error}"))?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: tandem-health\r\nConnection: close\r\n\r\n",
        parsed.path, parsed.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("GET {url}: send: {error}"))?;
    // The status line is all we need; 1 KiB holds it.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|error| format!("GET {url}: read: {error}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = status_code(&head).ok_or_else(|| format!("GET {url}: no HTTP status line"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {url} answered {status}"))
    }
}

/// The status code of an `HTTP/1.x NNN ...` status line.
pub(crate) fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = parse_http_url("http://127.0.0.1:8080/health?x=1").expect("parses");
        assert_eq!(
            url,
            HttpUrl {
                authority: "127.0.0.1:8080".into(),
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health?x=1".into()
            }
        );
        let url = parse_http_url("http://[::1]:81").expect("parses");
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("::1", 81, "/")
        );
        assert_eq!(parse_http_url("http://example").expect("parses").port, 80);
        assert!(parse_http_url("https://x/")
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_http_url("http://x:99999/").is_err());
        assert!(parse_http_url("http:///").is_err());
        assert!(parse_http_url("ftp://x/").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
