//! Settings: `config/default.toml`, an optional file, then the environment; parsed once into
//! typed values (durations, addresses) and checked.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The defaults, compiled in so the binary runs from any directory.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Shortest bearer token accepted: anything shorter could be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Tokens the README shows: anyone may know them.
const README_EXAMPLE_TOKENS: [&str; 1] = ["change-me-to-16-or-more"];

/// Environment variables whose names API.md fixes, and the setting each overrides.
const FIXED_ENV: [(&str, &str); 6] = [
    ("DATABASE_URL", "database.url"),
    ("HTTP_ADDR", "http.addr"),
    ("ADMIN_TOKEN", "admin.token"),
    ("API_TOKEN", "api.token"),
    ("DATA_DIR", "storage.data_dir"),
    ("INSTANCE_ID", "cluster.instance_id"),
];

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("{0}")]
    Invalid(String),
}

/// Every setting of the service.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub admin: AdminSettings,
    pub api: ApiSettings,
    pub storage: StorageSettings,
    pub listener: ListenerSettings,
    pub validation_log: ValidationLogSettings,
    pub journal: JournalSettings,
    pub ledger: LedgerSettings,
    pub hold: HoldSettings,
    pub protection: ProtectionSettings,
    pub cluster: ClusterSettings,
    pub log: LogSettings,
    pub money: MoneySettings,
    pub cart: CartSettings,
    pub stacking: StackingSettings,
    pub idempotency: IdempotencySettings,
}

/// Several codes on one order (API.md §10).
#[derive(Debug, Clone, Deserialize)]
pub struct StackingSettings {
    /// The most codes one request may name.
    pub max_codes: usize,
    /// The codes of one order together take at most this percent of its value.
    pub max_total_percent: u32,
}

/// Replays of uses taken with a cart (API.md §10's storage).
#[derive(Debug, Clone, Deserialize)]
pub struct IdempotencySettings {
    /// How long a use's allocation stays in memory to answer its replays; older replays read
    /// it from PostgreSQL.
    pub cart_cache_secs: u64,
    /// The most memory those allocations take (their estimated size), oldest dropped first.
    pub cart_cache_bytes: u64,
}

/// Money (API.md §9).
#[derive(Debug, Clone, Deserialize)]
pub struct MoneySettings {
    /// The currency of a request that names none, and of every coupon that names none: an
    /// ISO 4217 code with 2 decimals.
    pub default_currency: String,
}

impl MoneySettings {
    /// The default currency (checked at load).
    pub fn default_currency(&self) -> crate::domain::currency::Currency {
        crate::domain::currency::Currency::parse(&self.default_currency).expect("checked when the settings were loaded")
    }
}

/// Carts (API.md §9).
#[derive(Debug, Clone, Deserialize)]
pub struct CartSettings {
    /// The most lines a cart may have.
    pub max_lines: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_write_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub max_header_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub admin_timeout: Duration,
    /// Whether a service reachable beyond this machine may run without `API_TOKEN` (then
    /// anyone who reaches it can redeem, hold and release as the shop's backend would).
    pub allow_anonymous_writes: bool,
    /// The largest validate, redeem or hold body with `items` (API.md §9); others keep 16 KiB.
    pub max_body_bytes_cart: usize,
    /// Most open connections from one address (an IPv6 address by its /64); 0: no cap.
    pub max_connections_per_address: usize,
    /// Addresses the per-address cap leaves alone, beside the trusted proxies.
    #[serde(deserialize_with = "addresses")]
    pub connection_cap_exempt: Vec<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub token: Secret,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    /// Bearer token for redeem, release and hold; empty: every caller is trusted.
    pub token: Secret,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListenerSettings {
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ValidationLogSettings {
    /// Days of validations kept; older days' partitions are dropped.
    pub retention_days: u32,
    pub queue_capacity: usize,
    /// Rows spill into the journal only while it holds at most this many bytes unshipped;
    /// past it they are dropped and counted.
    pub spill_max_bytes: u64,
    pub batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JournalSettings {
    #[serde(with = "humantime_serde")]
    pub ship_retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub ship_retry_max: Duration,
    /// On shutdown, how long the shipper keeps shipping what is left.
    #[serde(with = "humantime_serde")]
    pub ship_shutdown_timeout: Duration,
    /// Free bytes of the journal's filesystem that validation rows never take: kept for
    /// uses, holds and releases.
    pub reserved_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LedgerSettings {
    /// How long a request waits for a concurrent request of the same order to settle.
    #[serde(with = "humantime_serde")]
    pub settle_timeout: Duration,
    /// How long a released redemption is remembered in memory.
    #[serde(with = "humantime_serde")]
    pub released_retention: Duration,
    /// Forgotten orders the filter is sized for.
    pub forgotten_capacity: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HoldSettings {
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    /// The default and the longest ttl of a hold from an anonymous caller (no API token, from
    /// another machine).
    pub anonymous_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProtectionSettings {
    pub failed_lookups_per_user: u32,
    /// Failed lookups per address of anonymous callers (when API_TOKEN is set).
    pub failed_lookups_per_address: u32,
    /// Failed admin authentications per address before its admin calls get 429.
    pub failed_admin_auths_per_address: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(deserialize_with = "addresses")]
    pub trusted_proxies: Vec<IpAddr>,
    pub max_active_holds_per_user: u32,
    /// Bulk codes one user may be handed per campaign by assign-next.
    pub assigned_codes_per_user: u32,
    /// Validations an anonymous caller (no API token, when one is set) may send per minute
    /// from one address; 0: no limit.
    pub anonymous_validations_per_minute: u32,
    /// Percent of a limited coupon's or campaign's remaining uses or budget one caller may
    /// hold at once (API.md §8); 0: no bound.
    pub hold_share_percent: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    /// This instance's stable identity (INSTANCE_ID); empty: one generated once and kept in
    /// DATA_DIR.
    pub instance_id: String,
    #[serde(with = "humantime_serde")]
    pub lease_target: Duration,
    #[serde(with = "humantime_serde")]
    pub lease_refill_at: Duration,
    #[serde(with = "humantime_serde")]
    pub claim_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_return: Duration,
    #[serde(with = "humantime_serde")]
    pub feed_interval: Duration,
    /// How long an instance must be silent (no heartbeat) before a write-off may take its
    /// units; it stops spending leases after half of it.
    #[serde(with = "humantime_serde")]
    pub identity_timeout: Duration,
    /// Whether this instance decides alone while it is the only one (`engine::alone`).
    pub decide_alone: bool,
    /// How long an instance deciding alone must be silent before a write-off; it decides
    /// alone without a proof of identity for half of it.
    #[serde(with = "humantime_serde")]
    pub alone_timeout: Duration,
}

impl ClusterSettings {
    /// How long this instance spends leases after its last proof of identity.
    pub(crate) fn spend_window(&self) -> Duration {
        self.identity_timeout / 2
    }

    /// How long this instance decides alone after its last proof of identity.
    pub(crate) fn alone_window(&self) -> Duration {
        self.alone_timeout / 2
    }

    /// The alone timeout if this instance may decide alone.
    pub fn alone(&self) -> Option<Duration> {
        self.decide_alone.then_some(self.alone_timeout)
    }

    /// How often its identity is proved.
    pub(crate) fn heartbeat_every(&self) -> Duration {
        self.identity_timeout / 10
    }

    /// How this instance's leases are sized and kept.
    pub fn leases(&self) -> crate::engine::leases::LeaseSettings {
        crate::engine::leases::LeaseSettings {
            target: self.lease_target,
            refill_at: self.lease_refill_at,
            claim_wait: self.claim_wait,
            idle_return: self.idle_return,
            exhausted_for: crate::engine::leases::LeaseSettings::EXHAUSTED_FOR,
        }
    }
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
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

/// IP addresses from a list or from a comma-separated string (as an environment variable
/// gives them).
fn addresses<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }
    let items = match Given::deserialize(deserializer)? {
        Given::List(items) => items,
        Given::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
        .map(|item| item.parse().map_err(|_| serde::de::Error::custom(format!("{item:?} is not an IP address"))))
        .collect()
}

/// A refused value says which fixed-name variable sets it, when one does.
fn name_the_variable(err: config::ConfigError) -> ConfigError {
    let text = err.to_string();
    match FIXED_ENV.iter().find(|(_, key)| text.contains(&format!("`{key}`"))) {
        Some((name, _)) => ConfigError::Invalid(format!("{name}: {text}")),
        None => ConfigError::Load(err),
    }
}

impl Settings {
    /// `config/default.toml` alone: what tests and benches build the engine with, so that
    /// a default is written in one place.
    pub fn defaults() -> Settings {
        Settings::load_from(None, std::iter::empty()).expect("config/default.toml loads")
    }

    /// What the engine is built with.
    pub fn engine(&self) -> crate::engine::EngineSettings {
        crate::engine::EngineSettings {
            settle_timeout: self.ledger.settle_timeout,
            max_active_holds_per_user: self.protection.max_active_holds_per_user,
            released_retention: self.ledger.released_retention,
            forgotten_capacity: self.ledger.forgotten_capacity,
            default_currency: self.money.default_currency(),
            cart_cache_ttl: Duration::from_secs(self.idempotency.cart_cache_secs),
            cart_cache_bytes: self.idempotency.cart_cache_bytes,
            hold_share_percent: self.protection.hold_share_percent,
            max_total_percent: self.stacking.max_total_percent,
        }
    }

    /// Loads the layers from the process environment and checks the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_from(file, std::env::vars())
    }

    /// Loads the layers with `vars` standing in for the environment.
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars.into_iter().collect();
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("COUPON")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars.clone())),
        );
        for (name, key) in FIXED_ENV {
            if let Some(value) = vars.get(name) {
                builder = builder.set_override(key, value.as_str())?;
            }
        }
        let settings: Settings = builder.build()?.try_deserialize().map_err(name_the_variable)?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |text: &str| Err(ConfigError::Invalid(text.to_owned()));
        let http = &self.http;
        if http.max_connections == 0 || http.max_in_flight == 0 {
            return invalid("http.max_connections and max_in_flight must be positive");
        }
        for (name, value) in [
            ("http.header_read_timeout", http.header_read_timeout),
            ("http.body_read_timeout", http.body_read_timeout),
            ("http.response_write_timeout", http.response_write_timeout),
            ("http.admin_timeout", http.admin_timeout),
            ("database.health_interval", self.database.health_interval),
            ("listener.heartbeat", self.listener.heartbeat),
            ("listener.retry_min", self.listener.retry_min),
            ("validation_log.flush_interval", self.validation_log.flush_interval),
            ("validation_log.retry_min", self.validation_log.retry_min),
            ("journal.ship_retry_min", self.journal.ship_retry_min),
            ("ledger.settle_timeout", self.ledger.settle_timeout),
            ("protection.window", self.protection.window),
        ] {
            if value.is_zero() {
                return invalid(&format!("{name} must be positive"));
            }
        }
        if self.cluster.identity_timeout < Duration::from_millis(200) {
            return invalid("cluster.identity_timeout must be at least 200ms");
        }
        if self.cluster.alone_timeout < self.cluster.identity_timeout {
            return invalid("cluster.alone_timeout must be at least cluster.identity_timeout");
        }
        // Requests without a currency, coupons' own amounts and campaigns' budgets are kept
        // in hundredths of the default currency (API.md §3): its minor unit must be one.
        if crate::domain::currency::Currency::parse(&self.money.default_currency).is_none_or(|c| c.decimals() != 2) {
            return invalid("money.default_currency must be an ISO 4217 code with 2 decimals (such as EUR or USD)");
        }
        if !(16 * 1024..=1024 * 1024).contains(&http.max_body_bytes_cart) {
            return invalid("http.max_body_bytes_cart must be from 16384 to 1048576");
        }
        if self.protection.hold_share_percent > 100 {
            return invalid("protection.hold_share_percent must be from 0 to 100");
        }
        if !(1..=self.hold.max_ttl_secs).contains(&self.hold.anonymous_ttl_secs) {
            return invalid("hold.anonymous_ttl_secs must be from 1 to hold.max_ttl_secs");
        }
        if !(1..=30 * 86_400).contains(&self.idempotency.cart_cache_secs) {
            return invalid("idempotency.cart_cache_secs must be from 1 to 2592000 (30 days)");
        }
        if !(1..=1 << 40).contains(&self.idempotency.cart_cache_bytes) {
            return invalid("idempotency.cart_cache_bytes must be from 1 to 1099511627776");
        }
        if !(1..=1000).contains(&self.cart.max_lines) {
            return invalid("cart.max_lines must be from 1 to 1000");
        }
        // `select: "best"` walks every subset of the codes: 31 keeps that within bounds.
        if !(1..=31).contains(&self.stacking.max_codes) {
            return invalid("stacking.max_codes must be from 1 to 31");
        }
        if self.stacking.max_total_percent > 100 {
            return invalid("stacking.max_total_percent must be from 0 to 100");
        }
        if self.api.token.is_empty() && !http.addr.ip().is_loopback() && !http.allow_anonymous_writes {
            return invalid(&format!(
                "API_TOKEN is not set and HTTP_ADDR {} can be reached from other machines: anyone there could \
                 redeem, hold and release for any user; set API_TOKEN (the shop's backend sends it), or \
                 COUPON__HTTP__ALLOW_ANONYMOUS_WRITES=true to allow it",
                http.addr
            ));
        }
        if http.max_header_bytes < 8192 {
            return invalid("http.max_header_bytes must be at least 8192");
        }
        let url = self.database.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return invalid("DATABASE_URL must start with postgres:// or postgresql://");
        }
        if self.database.max_connections < 2 {
            return invalid("database.max_connections must be at least 2");
        }
        let log = &self.validation_log;
        if log.queue_capacity == 0 || log.batch_size == 0 {
            return invalid("validation_log.queue_capacity and batch_size must be positive");
        }
        if log.retention_days == 0 {
            return invalid("validation_log.retention_days must be at least 1");
        }
        if log.retry_min > log.retry_max || self.listener.retry_min > self.listener.retry_max {
            return invalid("a retry_min must be at most its retry_max");
        }
        if self.journal.ship_retry_min > self.journal.ship_retry_max {
            return invalid("journal.ship_retry_min must be at most ship_retry_max");
        }
        let hold = &self.hold;
        if hold.default_ttl_secs == 0 || hold.default_ttl_secs > hold.max_ttl_secs {
            return invalid("hold.default_ttl_secs must be positive and at most hold.max_ttl_secs");
        }
        if self.protection.max_active_holds_per_user == 0 {
            return invalid("protection.max_active_holds_per_user must be positive");
        }
        if self.protection.assigned_codes_per_user == 0 {
            return invalid("protection.assigned_codes_per_user must be positive");
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return invalid("DATA_DIR must not be empty");
        }
        for (name, token) in [("ADMIN_TOKEN", &self.admin.token), ("API_TOKEN", &self.api.token)] {
            if !token.is_empty() && token.expose().chars().count() < MIN_TOKEN_CHARS {
                return invalid(&format!("{name} must be at least {MIN_TOKEN_CHARS} characters"));
            }
            if README_EXAMPLE_TOKENS.contains(&token.expose()) {
                return invalid(&format!("{name} is the README's example: choose a secret of your own"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(None, vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_load_and_fixed_names_override() {
        let defaults = load(&[]).unwrap();
        assert_eq!(defaults.http.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(defaults.http.header_read_timeout, Duration::from_secs(10));
        assert!(defaults.admin.token.is_empty() && defaults.api.token.is_empty());
        assert_eq!(defaults.hold.default_ttl_secs, 900);
        let settings = load(&[
            ("DATABASE_URL", "postgres://u@h:1/db"),
            ("HTTP_ADDR", "0.0.0.0:9000"),
            ("ADMIN_TOKEN", "s3cret-s3cret-s3cret"),
            ("API_TOKEN", "api-s3cret-s3cret-s3cret"),
            ("DATA_DIR", "/tmp/x"),
            ("INSTANCE_ID", "edge-1"),
            ("COUPON__VALIDATION_LOG__BATCH_SIZE", "7"),
            ("COUPON__HTTP__BODY_READ_TIMEOUT", "250ms"),
            ("COUPON__PROTECTION__TRUSTED_PROXIES", "10.0.0.1, ::1"),
        ])
        .unwrap();
        assert_eq!(settings.database.url.expose(), "postgres://u@h:1/db");
        assert_eq!(settings.http.addr, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(settings.admin.token.expose(), "s3cret-s3cret-s3cret");
        assert_eq!(settings.storage.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(settings.cluster.instance_id, "edge-1");
        assert_eq!(settings.validation_log.batch_size, 7);
        assert_eq!(settings.http.body_read_timeout, Duration::from_millis(250));
        assert_eq!(
            settings.protection.trusted_proxies,
            vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn writes_open_to_other_machines_need_a_token_or_a_yes() {
        let open = [("HTTP_ADDR", "0.0.0.0:8080")];
        let err = load(&open).expect_err("no token on every interface").to_string();
        assert!(err.contains("API_TOKEN is not set") && err.contains("ALLOW_ANONYMOUS_WRITES"), "{err}");
        assert!(load(&[("HTTP_ADDR", "[::]:8080")]).is_err());
        assert!(load(&[("HTTP_ADDR", "10.1.2.3:8080")]).is_err());
        assert!(load(&[("HTTP_ADDR", "0.0.0.0:8080"), ("API_TOKEN", "a-token-of-24-characters")]).is_ok());
        assert!(load(&[("HTTP_ADDR", "0.0.0.0:8080"), ("COUPON__HTTP__ALLOW_ANONYMOUS_WRITES", "true")]).is_ok());
        assert!(load(&[("HTTP_ADDR", "127.0.0.1:8080")]).is_ok(), "loopback: only this machine's callers");
        assert!(load(&[("HTTP_ADDR", "[::1]:8080")]).is_ok());
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        for (vars, needle) in [
            (vec![("HTTP_ADDR", "nonsense")], "HTTP_ADDR"),
            (vec![("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (vec![("COUPON__VALIDATION_LOG__BATCH_SIZE", "0")], "batch_size"),
            (vec![("COUPON__VALIDATION_LOG__BATCH_SIZE", "many")], "batch_size"),
            (vec![("COUPON__LOG__FORMAT", "xml")], "format"),
            (vec![("COUPON__HTTP__BODY_READ_TIMEOUT", "soon")], "body_read_timeout"),
            (vec![("COUPON__HTTP__BODY_READ_TIMEOUT", "0s")], "body_read_timeout"),
            (vec![("COUPON__PROTECTION__TRUSTED_PROXIES", "10.0.0.1,proxy")], "proxy"),
            (vec![("COUPON__HOLD__DEFAULT_TTL_SECS", "7200")], "default_ttl_secs"),
            (vec![("ADMIN_TOKEN", "short")], "ADMIN_TOKEN must be at least 16"),
            (vec![("API_TOKEN", "fifteen-chars!!")], "API_TOKEN must be at least 16"),
            (vec![("ADMIN_TOKEN", "change-me-to-16-or-more")], "README's example"),
            (vec![("COUPON__HTTP__MAX_BODY_BYTES_CART", "1024")], "max_body_bytes_cart"),
            (vec![("COUPON__MONEY__DEFAULT_CURRENCY", "JPY")], "2 decimals"),
            (vec![("COUPON__MONEY__DEFAULT_CURRENCY", "XYZ")], "default_currency"),
        ] {
            let err = load(&vars).expect_err("should be refused");
            let text = err.to_string();
            assert!(text.contains(needle), "{text:?} should mention {needle}");
        }
    }
}
