//! The node's own config file, `<state>/tandem.toml`: its name, listen address, site and
//! optional timing and logging overrides.
//!
//! Operators edit this file by hand, so a mistake must come back as one line that names the
//! file, the line and the key (`config error in /var/lib/tandem/tandem.toml, line 7: unknown
//! key `nod_timeout_ms` in [timing]`), never as a panic or a generic parse failure. Values are
//! checked for sanity after parsing with the same kind of message.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pki::validate_node_name;
use crate::statedir::write_atomic;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name: one DNS label, the name in its certificate.
    pub name: String,
    /// The address peers dial, `HOST:PORT` with HOST an IP address.
    pub listen: String,
    /// The site (room, data centre) this node is in, for placement preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "TimingConfig::is_empty")]
    pub timing: TimingConfig,
    #[serde(default, skip_serializing_if = "LogConfig::is_empty")]
    pub log: LogConfig,
}

/// Timing overrides; anything left out takes the daemon's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_ticks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ticks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_timeout_ms: Option<u64>,
}

/// Logging overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `tandem=debug,warn`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

impl TimingConfig {
    fn is_empty(&self) -> bool {
        *self == TimingConfig::default()
    }
}

impl LogConfig {
    fn is_empty(&self) -> bool {
        *self == LogConfig::default()
    }
}

/// Why the config file could not be read, understood or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist (run `tandem init` or `tandem join` first)", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write config file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// `line` is 1-based; `key` is dotted (`timing.tick_ms`) when known.
    #[error("config error in {}{}: {detail}", path.display(), line_suffix(*line))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: Option<String>,
        detail: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|line| format!(", line {line}"))
        .unwrap_or_default()
}

/// Reads, parses and checks the config file.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ConfigError::Missing {
            path: path.to_path_buf(),
        },
        _ => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let config: NodeConfig = toml::from_str(&text).map_err(|err| parse_error(path, &text, &err))?;
    validate(&config).map_err(|problem| problem.locate(path, Some(&text)))?;
    Ok(config)
}

/// Checks and writes the config file atomically (temporary file, fsync, rename).
pub fn save(path: &Path, config: &NodeConfig) -> Result<(), ConfigError> {
    validate(config).map_err(|problem| problem.locate(path, None))?;
    let text = toml::to_string_pretty(config).map_err(|err| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: None,
        key: None,
        detail: format!("cannot encode the config: {err}"),
    })?;
    write_atomic(path, text.as_bytes(), 0o644).map_err(|source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Turns a toml/serde error into file + line + key + what is wrong.
fn parse_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim();
    let span = err.span().filter(|span| span.start < text.len());
    let line = span.as_ref().map(|span| line_of(text, span.start));
    let table = span.as_ref().and_then(|span| table_at(text, span.start));
    let in_table = table
        .as_deref()
        .map(|table| format!(" in [{table}]"))
        .unwrap_or_default();
    let quoted = quoted_name(message);
    let (key, detail) = if message.starts_with("unknown field") {
        let key = quoted.unwrap_or("?");
        let expected = message.split_once(", expected ").map(|(_, rest)| rest);
        let hint = expected
            .map(|rest| format!("; expected {rest}"))
            .unwrap_or_default();
        (
            Some(dotted(table.as_deref(), key)),
            format!("unknown key `{key}`{in_table}{hint}"),
        )
    } else if message.starts_with("missing field") {
        let key = dotted(table.as_deref(), quoted.unwrap_or("?"));
        // The span of a missing key is its whole table, so the line would mislead.
        return ConfigError::Invalid {
            path: path.to_path_buf(),
            line: None,
            detail: format!("missing key `{key}`"),
            key: Some(key),
        };
    } else if let Some(key) = span.as_ref().and_then(|span| key_on_line(text, span.start)) {
        let key = dotted(table.as_deref(), &key);
        (Some(key.clone()), format!("key `{key}`: {message}"))
    } else {
        (None, message.to_string())
    };
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key,
        detail,
    }
}

/// The first `backquoted` word of a serde message ("unknown field `x`, expected ...").
fn quoted_name(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    Some(name)
}

fn dotted(table: Option<&str>, key: &str) -> String {
    match table {
        Some(table) if !key.contains('.') => format!("{table}.{key}"),
        _ => key.to_string(),
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

/// The `[table]` whose body contains the byte offset, if any.
fn table_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let mut table = None;
    for line in before.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            let name = line.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or(name);
            table = Some(name.trim().to_string());
        }
    }
    table
}

/// The key assigned on the line holding the byte offset (`key = value`), if any.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |at| at + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#')).then(|| key.to_string())
}

/// The 1-based line on which `key` is set inside `[table]` (top level when `table` is None).
fn find_key_line(text: &str, table: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let name = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("");
            current = Some(name.trim().to_string());
            continue;
        }
        let Some((name, _)) = trimmed.split_once('=') else {
            continue;
        };
        if current.as_deref() == table && name.trim().trim_matches('"') == key {
            return Some(index + 1);
        }
    }
    None
}

/// A value that parsed but makes no sense; located in the file by [`Problem::locate`].
struct Problem {
    table: Option<&'static str>,
    key: &'static str,
    detail: String,
}

impl Problem {
    fn new(table: Option<&'static str>, key: &'static str, detail: String) -> Problem {
        Problem { table, key, detail }
    }

    fn locate(self, path: &Path, text: Option<&str>) -> ConfigError {
        let key = dotted(self.table, self.key);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line: text.and_then(|text| find_key_line(text, self.table, self.key)),
            detail: format!("key `{key}`: {}", self.detail),
            key: Some(key),
        }
    }
}

/// Sanity checks of values that parsed.
fn validate(config: &NodeConfig) -> Result<(), Problem> {
    validate_node_name(&config.name).map_err(|err| Problem::new(None, "name", err.to_string()))?;
    if config.listen.parse::<SocketAddr>().is_err() {
        let detail = format!(
            "{:?} is not an IP address and port (e.g. \"0.0.0.0:7400\" or \"[::]:7400\")",
            config.listen
        );
        return Err(Problem::new(None, "listen", detail));
    }
    if let Some(site) = &config.site {
        if site.trim().is_empty() {
            return Err(Problem::new(None, "site", "must not be empty".into()));
        }
    }
    validate_timing(&config.timing)?;
    if let Some(level) = &config.log.level {
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(level) {
            let detail = format!("{level:?} is not a log filter (e.g. \"info\"): {err}");
            return Err(Problem::new(Some("log"), "level", detail));
        }
    }
    Ok(())
}

fn validate_timing(timing: &TimingConfig) -> Result<(), Problem> {
    let fields = [
        ("tick_ms", timing.tick_ms),
        ("election_ticks", timing.election_ticks),
        ("heartbeat_ticks", timing.heartbeat_ticks),
        ("ping_interval_ms", timing.ping_interval_ms),
        ("node_timeout_ms", timing.node_timeout_ms),
        ("lease_timeout_ms", timing.lease_timeout_ms),
    ];
    let timing_problem = |key, detail| Err(Problem::new(Some("timing"), key, detail));
    for (key, value) in fields {
        if value == Some(0) {
            return timing_problem(key, "must be greater than 0".into());
        }
    }
    if let (Some(election), Some(heartbeat)) = (timing.election_ticks, timing.heartbeat_ticks) {
        if election <= heartbeat {
            let detail = format!("{election} must be greater than heartbeat_ticks ({heartbeat})");
            return timing_problem("election_ticks", detail);
        }
    }
    if let (Some(lease), Some(ping)) = (timing.lease_timeout_ms, timing.ping_interval_ms) {
        if lease < ping.saturating_mul(2) {
            let detail = format!("{lease} must be at least twice ping_interval_ms ({ping})");
            return timing_problem("lease_timeout_ms", detail);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name = \"alpha\"\nlisten = \"10.0.0.1:7400\"\nsite = \"room-a\"\n\n[timing]\n# faster failover\nping_interval_ms = 200\nlease_timeout_ms = 1000\n\n[log]\nlevel = \"tandem=debug,info\"\n";

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// Loads `text`, expecting an `Invalid` error; returns (line, key, message).
    fn invalid(text: &str) -> (Option<usize>, Option<String>, String) {
        let (_dir, path) = write(text);
        let err = load(&path).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        match err {
            ConfigError::Invalid { line, key, .. } => (line, key, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn good_file_loads_and_round_trips() {
        let (dir, path) = write(GOOD);
        let config = load(&path).unwrap();
        assert_eq!(config.name, "alpha");
        assert_eq!(config.site.as_deref(), Some("room-a"));
        assert_eq!(config.timing.ping_interval_ms, Some(200));
        assert_eq!(config.timing.tick_ms, None);
        let copy = dir.path().join("copy.toml");
        save(&copy, &config).unwrap();
        assert_eq!(load(&copy).unwrap(), config);
        let minimal = NodeConfig {
            site: None,
            timing: Default::default(),
            log: Default::default(),
            ..config
        };
        save(&copy, &minimal).unwrap();
        assert_eq!(
            std::fs::read_to_string(&copy).unwrap(),
            "name = \"alpha\"\nlisten = \"10.0.0.1:7400\"\n"
        );
        assert_eq!(load(&copy).unwrap(), minimal);
    }

    #[test]
    fn unknown_top_level_key_is_named_with_its_line() {
        let (line, key, message) =
            invalid("name = \"a\"\nlisten = \"127.0.0.1:1\"\nnmae = \"b\"\n");
        assert_eq!((line, key.as_deref()), (Some(3), Some("nmae")));
        assert!(
            message.contains(", line 3: unknown key `nmae`; expected one of `name`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_in_timing_is_named_with_its_table() {
        let text = GOOD.replace("lease_timeout_ms = 1000", "nod_timeout_ms = 1000");
        let (line, key, message) = invalid(&text);
        assert_eq!(
            (line, key.as_deref()),
            (Some(8), Some("timing.nod_timeout_ms"))
        );
        assert!(
            message.contains(", line 8: unknown key `nod_timeout_ms` in [timing]"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = GOOD.replace("ping_interval_ms = 200", "ping_interval_ms = \"fast\"");
        let (line, key, message) = invalid(&text);
        assert_eq!(
            (line, key.as_deref()),
            (Some(7), Some("timing.ping_interval_ms"))
        );
        assert!(
            message.contains("key `timing.ping_interval_ms`: invalid type: string \"fast\""),
            "{message}"
        );
        let (line, key, _) = invalid("name = 5\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!((line, key.as_deref()), (Some(1), Some("name")));
    }

    #[test]
    fn missing_key_and_bad_syntax_are_reported() {
        let (line, key, message) = invalid("name = \"a\"\n");
        assert_eq!((line, key.as_deref()), (None, Some("listen")));
        assert!(message.ends_with(": missing key `listen`"), "{message}");
        let (line, _, message) = invalid("name = \"a\"\nlisten = \n");
        assert_eq!(line, Some(2), "{message}");
    }

    #[test]
    fn bad_listen_is_refused_naming_the_key() {
        let text = GOOD.replace("10.0.0.1:7400", "alpha:7400");
        let (line, key, message) = invalid(&text);
        assert_eq!((line, key.as_deref()), (Some(2), Some("listen")));
        assert!(
            message
                .contains(", line 2: key `listen`: \"alpha:7400\" is not an IP address and port"),
            "{message}"
        );
    }

    #[test]
    fn insane_values_are_refused() {
        let (line, key, message) = invalid(&GOOD.replace("alpha", "Alpha"));
        assert_eq!((line, key.as_deref()), (Some(1), Some("name")));
        assert!(message.contains("'A' is not allowed"), "{message}");
        let (line, key, _) = invalid(&GOOD.replace("= 200", "= 0"));
        assert_eq!(
            (line, key.as_deref()),
            (Some(7), Some("timing.ping_interval_ms"))
        );
        let (line, key, message) = invalid(&GOOD.replace("= 1000", "= 300"));
        assert_eq!(
            (line, key.as_deref()),
            (Some(8), Some("timing.lease_timeout_ms"))
        );
        assert!(
            message.contains("at least twice ping_interval_ms (200)"),
            "{message}"
        );
        let (line, key, _) = invalid(&GOOD.replace("tandem=debug,info", "tandem=loud"));
        assert_eq!((line, key.as_deref()), (Some(11), Some("log.level")));
        let text = GOOD.replace(
            "[timing]",
            "[timing]\nelection_ticks = 2\nheartbeat_ticks = 2",
        );
        let (_, key, _) = invalid(&text);
        assert_eq!(key.as_deref(), Some("timing.election_ticks"));
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }));
        assert!(err
            .to_string()
            .contains(&format!("config file {} does not exist", path.display())));
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn save_refuses_invalid_config_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        let config = NodeConfig {
            name: "a".into(),
            listen: "nope".into(),
            site: None,
            timing: Default::default(),
            log: Default::default(),
        };
        let message = save(&path, &config).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("config error in {}: key `listen`", path.display())),
            "{message}"
        );
        assert!(!path.exists());
        let err = save(
            &dir.path().join("no/such/dir/tandem.toml"),
            &NodeConfig {
                listen: "[::1]:7400".into(),
                ..config
            },
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Write { .. }), "{err}");
    }
}
