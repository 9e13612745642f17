//! `tandem counter-service`: a tiny real service that keeps its data on the mirrored volume,
//! for the demo and the failover tests on machines without nginx or PostgreSQL.
//!
//! HTTP/1.0, one request per connection, one connection at a time:
//! - `GET /` → `count=<n> host=<name>`
//! - `POST /increment` → adds one, makes it durable (`DIR/counter.tmp` written and fsynced,
//!   renamed over `DIR/counter`, the directory fsynced), and only then answers
//!   `count=<n> host=<name>`: every acknowledged increment survives a crash or a failover.
//!   If the write fails the answer is 500 and the count is unchanged.
//! - `GET /health` → 200 `ok`
//!
//! On start it reads `DIR/counter` (missing: 0). A file that is not a decimal number is
//! refused with an error naming it, and the service does not start. Requests are bounded
//! (headers 8 KiB, bodies 64 KiB) and time out after 5 s; malformed ones get 400, never a
//! panic. It runs until killed (SIGTERM's default action ends it; there is nothing to flush).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// The longest request head (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// The longest request body (read and ignored).
const MAX_BODY: usize = 64 * 1024;
/// How long one client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The command-line options of `tandem counter-service`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory holding `counter` (on the mirrored volume).
    pub dir: PathBuf,
    /// `ADDR:PORT` to listen on.
    pub listen: String,
    /// The label in answers; the host name when absent.
    pub name: Option<String>,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Show,
    Increment,
    Health,
}

/// A finished answer: status code and body.
struct Answer {
    code: u16,
    body: String,
}

impl Answer {
    fn new(code: u16, body: impl Into<String>) -> Answer {
        Answer {
            code,
            body: body.into(),
        }
    }
}

/// The service's state: the durable count and where it lives.
struct Counter {
    path: PathBuf,
    count: u64,
    name: String,
}

/// Runs the service until the process is killed; returns only on a startup error.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let path = options.dir.join("counter");
    let count = load(&path)?;
    let name = match &options.name {
        Some(name) => name.clone(),
        None => hostname(),
    };
    let listener = TcpListener::bind(&options.listen)
        .with_context(|| format!("counter-service: cannot listen on {}", options.listen))?;
    eprintln!(
        "counter-service {name}: listening on {}, count={count} from {}",
        options.listen,
        path.display()
    );
    let mut counter = Counter { path, count, name };
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(error) = counter.serve(stream) {
                    eprintln!("counter-service: client {peer}: {error}");
                }
            }
            Err(error) => {
                eprintln!("counter-service: accept failed: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads the count at `path`: missing is 0, anything but a decimal number is an error.
fn load(path: &Path) -> anyhow::Result<u64> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(path);
            anyhow::ensure!(
                dir.is_dir(),
                "counter-service: the data directory {} does not exist (is the volume mounted?)",
                dir.display()
            );
            return Ok(0);
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!(
                    "counter-service: cannot read counter file {}",
                    path.display()
                )
            })
        }
    };
    let digits = text.strip_suffix('\n').unwrap_or(&text);
    let valid = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    valid
        .then(|| digits.parse::<u64>().ok())
        .flatten()
        .with_context(|| {
            format!(
                "counter-service: corrupt counter file {}: expected a decimal number, found {:?}; \
                 refusing to start",
                path.display(),
                text.chars().take(40).collect::<String>()
            )
        })
}

/// Writes `count` durably: temp file, fsync, rename, fsync of the directory.
fn store(path: &Path, count: u64) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(format!("{count}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return "unknown".into();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

impl Counter {
    /// Reads one request from `stream`, acts on it and writes the answer.
    fn serve(&mut self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        let answer = match read_request(&mut stream)? {
            Ok(route) => self.answer(route),
            Err(refusal) => refusal,
        };
        write_answer(&mut stream, &answer)
    }

    fn answer(&mut self, route: Route) -> Answer {
        match route {
            Route::Health => Answer::new(200, "ok\n"),
            Route::Show => Answer::new(200, self.line()),
            Route::Increment => {
                let next = self.count.saturating_add(1);
                match store(&self.path, next) {
                    Ok(()) => {
                        self.count = next;
                        Answer::new(200, self.line())
                    }
                    Err(error) => {
                        eprintln!(
                            "counter-service: cannot write {}: {error}",
                            self.path.display()
                        );
                        Answer::new(500, format!("cannot store the count: {error}\n"))
                    }
                }
            }
        }
    }

    fn line(&self) -> String {
        format!("count={} host={}\n", self.count, self.name)
    }
}

/// Reads the request head (and discards a bounded body). The outer error is an I/O failure
/// (nothing to answer); the inner one is the answer to a bad request.
fn read_request(stream: &mut TcpStream) -> io::Result<Result<Route, Answer>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = head_end(&head) {
            break end;
        }
        if head.len() > MAX_HEAD {
            return Ok(Err(Answer::new(431, "request head too large\n")));
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(Err(Answer::new(400, "incomplete request\n")));
        }
        head.extend_from_slice(&chunk[..read]);
    };
    let Ok(text) = std::str::from_utf8(&head[..end]) else {
        return Ok(Err(Answer::new(400, "request head is not UTF-8\n")));
    };
    let parsed = parse_head(text);
    if let Ok(length) = content_length(text) {
        // Read the body so that closing the socket does not reset the answer away.
        let already = head.len() - end;
        if length > MAX_BODY {
            return Ok(Err(Answer::new(413, "request body too large\n")));
        }
        if length > already {
            let mut rest = vec![0u8; length - already];
            stream.read_exact(&mut rest)?;
        }
    } else {
        return Ok(Err(Answer::new(400, "bad Content-Length\n")));
    }
    Ok(parsed)
}

/// The index just past the blank line ending the head, if it has arrived.
fn head_end(head: &[u8]) -> Option<usize> {
    let crlf = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The request line's method and path, checked.
fn parse_head(head: &str) -> Result<Route, Answer> {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Answer::new(400, "malformed request line\n"));
    };
    if !version.trim_end().starts_with("HTTP/1.") || !path.starts_with('/') {
        return Err(Answer::new(400, "malformed request line\n"));
    }
    match (method, path) {
        ("GET", "/") => Ok(Route::Show),
        ("GET", "/health") => Ok(Route::Health),
        ("POST", "/increment") => Ok(Route::Increment),
        (_, "/" | "/health" | "/increment") => Err(Answer::new(405, "method not allowed\n")),
        _ => Err(Answer::new(404, "not found\n")),
    }
}

/// The Content-Length header (0 when absent); an error when it is not a number.
fn content_length(head: &str) -> Result<usize, ()> {
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                return value.trim().parse().map_err(drop);
            }
        }
    }
    Ok(0)
}

fn write_answer(stream: &mut TcpStream, answer: &Answer) -> io::Result<()> {
    let reason = match answer.code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let text = format!(
        "HTTP/1.0 {} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{}",
        answer.code,
        answer.body.len(),
        answer.body
    );
    stream.write_all(text.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refusals() {
        assert_eq!(parse_head("GET / HTTP/1.0\r\n").ok(), Some(Route::Show));
        assert_eq!(
            parse_head("POST /increment HTTP/1.1\r\nHost: x\r\n").ok(),
            Some(Route::Increment)
        );
        assert_eq!(parse_head("GET /health HTTP/1.0").ok(), Some(Route::Health));
        for (head, code) in [
            ("GARBAGE", 400),
            ("GET /  HTTP/1.0", 400),
            ("GET / FTP/1.0", 400),
            ("GET nope HTTP/1.0", 400),
            ("", 400),
            ("DELETE / HTTP/1.0", 405),
            ("GET /increment HTTP/1.0", 405),
            ("GET /other HTTP/1.0", 404),
        ] {
            assert_eq!(
                parse_head(head).err().map(|a| a.code),
                Some(code),
                "{head:?}"
            );
        }
    }

    #[test]
    fn content_length_and_head_end() {
        assert_eq!(
            content_length("POST / HTTP/1.0\r\nContent-Length: 5\r\n"),
            Ok(5)
        );
        assert_eq!(content_length("GET / HTTP/1.0\r\n"), Ok(0));
        assert!(content_length("POST / HTTP/1.0\r\ncontent-length: x\r\n").is_err());
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n"), None);
    }

    #[test]
    fn the_count_round_trips_and_corruption_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("counter");
        assert_eq!(load(&path).ok(), Some(0));
        store(&path, 41).expect("store");
        assert_eq!(load(&path).ok(), Some(41));
        std::fs::write(&path, "12abc\n").expect("write");
        let error = format!("{:#}", load(&path).expect_err("refused"));
        assert!(
            error.contains("corrupt counter file") && error.contains(&path.display().to_string())
        );
        std::fs::write(&path, "").expect("write");
        assert!(load(&path).is_err());
        assert!(load(&dir.path().join("missing/counter")).is_err());
    }
}
