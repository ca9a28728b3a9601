//! Settings: `config/default.toml`, an optional file, then the environment; checked once.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The defaults, compiled in so the binary runs from any directory.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Environment variables whose names API.md fixes, and the setting each overrides.
const FIXED_ENV: [(&str, &str); 4] = [
    ("DATABASE_URL", "database.url"),
    ("HTTP_ADDR", "http.addr"),
    ("ADMIN_TOKEN", "admin.token"),
    ("DATA_DIR", "storage.data_dir"),
];

/// Every setting of the service.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub admin: AdminSettings,
    pub storage: StorageSettings,
    pub listener: ListenerSettings,
    pub validation_log: ValidationLogSettings,
    pub protection: ProtectionSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub addr: String,
    pub header_read_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub max_header_bytes: usize,
    pub admin_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
    pub health_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub token: Secret,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProtectionSettings {
    pub failed_lookups_per_user: u32,
    pub failed_lookups_per_ip: u32,
    pub window_secs: u64,
    pub trusted_proxies: String,
}

impl ProtectionSettings {
    /// The trusted proxies, parsed.
    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<std::net::IpAddr>> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().with_context(|| format!("protection.trusted_proxies: {s:?} is not an IP address")))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListenerSettings {
    pub heartbeat_ms: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ValidationLogSettings {
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Settings {
    /// Loads the layers from the process environment and checks the result.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Settings::load_from(file, std::env::vars())
    }

    /// Loads the layers with `vars` standing in for the environment.
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Settings> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        for (name, value) in &vars {
            if let Some(key) = env_key(name) {
                builder = builder.set_override(key, value.as_str())?;
            }
        }
        for (name, key) in FIXED_ENV {
            if let Some((_, value)) = vars.iter().find(|(var, _)| var == name) {
                builder = builder.set_override(key, value.as_str())?;
            }
        }
        let settings: Settings = builder.build()?.try_deserialize().context("invalid configuration")?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
        self.http_addr()?;
        let http = &self.http;
        if http.max_connections == 0 || http.max_in_flight == 0 || http.admin_timeout_ms == 0 {
            bail!("http.max_connections, max_in_flight and admin_timeout_ms must be positive");
        }
        if http.max_header_bytes < 8192 {
            bail!("http.max_header_bytes must be at least 8192");
        }
        let url = self.database.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("DATABASE_URL must start with postgres:// or postgresql://");
        }
        if self.database.max_connections < 2 {
            bail!("database.max_connections must be at least 2");
        }
        let log = &self.validation_log;
        if log.queue_capacity == 0 || log.batch_size == 0 || log.flush_interval_ms == 0 {
            bail!("validation_log.queue_capacity, batch_size and flush_interval_ms must be positive");
        }
        if log.retry_min_ms == 0 || log.retry_min_ms > log.retry_max_ms {
            bail!("validation_log.retry_min_ms must be positive and at most retry_max_ms");
        }
        self.protection.trusted_proxies()?;
        if self.protection.window_secs == 0 {
            bail!("protection.window_secs must be positive");
        }
        let listener = &self.listener;
        if listener.heartbeat_ms == 0 || listener.retry_min_ms == 0 || listener.retry_min_ms > listener.retry_max_ms {
            bail!("listener.heartbeat_ms and retry_min_ms must be positive, retry_min_ms at most retry_max_ms");
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            bail!("DATA_DIR must not be empty");
        }
        Ok(())
    }

    /// The listen address.
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        self.http
            .addr
            .parse()
            .with_context(|| format!("HTTP_ADDR {:?} is not an address such as 127.0.0.1:8080", self.http.addr))
    }
}

impl ValidationLogSettings {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
}

/// `COUPON__SECTION__KEY` → `section.key`.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("COUPON__")?;
    Some(rest.to_ascii_lowercase().replace("__", "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        Settings::load_from(None, vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_load_and_fixed_names_override() {
        let defaults = load(&[]).unwrap();
        assert_eq!(defaults.http.addr, "127.0.0.1:8080");
        assert_eq!(defaults.admin.token.expose(), "");
        let settings = load(&[
            ("DATABASE_URL", "postgres://u@h:1/db"),
            ("HTTP_ADDR", "0.0.0.0:9000"),
            ("ADMIN_TOKEN", "s3cret"),
            ("DATA_DIR", "/tmp/x"),
            ("COUPON__VALIDATION_LOG__BATCH_SIZE", "7"),
        ])
        .unwrap();
        assert_eq!(settings.database.url.expose(), "postgres://u@h:1/db");
        assert_eq!(settings.http.addr, "0.0.0.0:9000");
        assert_eq!(settings.admin.token.expose(), "s3cret");
        assert_eq!(settings.storage.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(settings.validation_log.batch_size, 7);
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        for (vars, needle) in [
            (vec![("HTTP_ADDR", "nonsense")], "HTTP_ADDR"),
            (vec![("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (vec![("COUPON__VALIDATION_LOG__BATCH_SIZE", "0")], "batch_size"),
            (vec![("COUPON__VALIDATION_LOG__BATCH_SIZE", "many")], "batch_size"),
            (vec![("COUPON__LOG__FORMAT", "xml")], "format"),
        ] {
            let err = load(&vars).expect_err("should be refused");
            let text = format!("{err:#}");
            assert!(text.contains(needle), "{text:?} should mention {needle}");
        }
    }
}
