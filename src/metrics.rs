//! Prometheus metrics: one recorder per service instance and pre-registered handles.
//!
//! Handles are registered up front (or once, on first use) and kept, because building a
//! key through the `metrics` macros costs ~25× a cached handle (TECH-NOTES §4). Label sets
//! are bounded: route templates, status codes, reasons; never a code or a user id.

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::domain::rules::Reason;

/// Latency buckets, in seconds: 50 µs to 1 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The routes the service answers, as bounded metric labels (route templates, not paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Validate,
    Redeem,
    Release,
    Health,
    Ready,
    Metrics,
    OpenApi,
    AdminReload,
    AdminStats,
    AdminCoupons,
    AdminCoupon,
    AdminCouponStats,
    AdminRecentValidations,
    Unmatched,
}

impl Route {
    const ALL: [Route; 14] = [
        Route::Validate,
        Route::Redeem,
        Route::Release,
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::OpenApi,
        Route::AdminReload,
        Route::AdminStats,
        Route::AdminCoupons,
        Route::AdminCoupon,
        Route::AdminCouponStats,
        Route::AdminRecentValidations,
        Route::Unmatched,
    ];

    /// Every route the service answers, for checks against the OpenAPI description.
    pub fn all() -> &'static [Route] {
        &Route::ALL
    }

    /// Whether the route is behind the admin token.
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            Route::AdminReload
                | Route::AdminStats
                | Route::AdminCoupons
                | Route::AdminCoupon
                | Route::AdminCouponStats
                | Route::AdminRecentValidations
        )
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Route::Validate => "/api/coupons/validate",
            Route::Redeem => "/api/coupons/redeem",
            Route::Release => "/api/coupons/release",
            Route::Health => "/health",
            Route::Ready => "/health/ready",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::AdminReload => "/admin/cache/reload",
            Route::AdminStats => "/admin/cache/stats",
            Route::AdminCoupons => "/admin/coupons",
            Route::AdminCoupon => "/admin/coupons/{code}",
            Route::AdminCouponStats => "/admin/coupons/{code}/stats",
            Route::AdminRecentValidations => "/admin/validations/recent",
            Route::Unmatched => "unmatched",
        }
    }
}

/// Status codes the service answers with; anything else is counted as "other".
const STATUSES: [u16; 14] = [200, 201, 400, 401, 404, 405, 409, 413, 415, 422, 429, 431, 500, 503];

struct RouteMetrics {
    /// Registered on first use, so only statuses that happened are exported.
    requests: [OnceLock<(Counter, Histogram)>; STATUSES.len() + 1],
}

/// Counters for one write-behind table.
#[derive(Clone)]
pub struct WriteBehindMetrics {
    pub written: Counter,
    pub spilled: Counter,
    pub dropped: Counter,
    pub flush_seconds: Histogram,
    pub queue_depth: Gauge,
}

/// Journal write costs.
#[derive(Clone)]
pub struct JournalMetrics {
    pub fsync_seconds: Histogram,
    pub bytes: Counter,
}

/// Outcomes of a redemption: the first two, then one per reason.
pub const REDEEM_OUTCOMES: [&str; 2] = ["redeemed", "replayed"];
/// Outcomes of a release.
pub const RELEASE_OUTCOMES: [&str; 3] = ["released", "repeated", "not_found"];

/// Every metric of one service instance.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    routes: Vec<RouteMetrics>,
    validations: Vec<Counter>,
    pub cache_coupons: Gauge,
    pub cache_reloads: Counter,
    pub notifications_applied: Counter,
    pub listener_reconnects: Counter,
    pub validation_logs: WriteBehindMetrics,
    pub coupon_usage: WriteBehindMetrics,
    pub journal: JournalMetrics,
    pub journal_backlog: Gauge,
    pub cache_age: Gauge,
    pub pool_idle: Gauge,
    pub pool_in_use: Gauge,
    pub pool_max: Gauge,
    pub refused_by_user: Counter,
    pub refused_by_ip: Counter,
    process: ProcessMetrics,
    redemptions: Vec<Counter>,
    releases: Vec<Counter>,
}

impl Metrics {
    /// A fresh registry. Not installed globally, so several instances can live in one process.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let recorder = Arc::new(recorder);
        let handle = recorder.handle();
        let reg = Registrar(&recorder);

        reg.describe_counter("http_requests_total", "HTTP requests answered, by route template and status");
        reg.describe_histogram(
            "http_request_duration_seconds",
            Unit::Seconds,
            "Time to answer, by route template and status",
        );
        reg.describe_gauge("cache_age_seconds", "Seconds since the catalog was last reloaded in full");
        reg.describe_gauge("db_pool_connections", "Pool connections by state");
        reg.describe_gauge("db_pool_max_connections", "Pool size limit");
        reg.describe_counter("process_cpu_seconds_total", "CPU time used by the process, user and system");
        reg.describe_gauge("process_resident_memory_bytes", "Resident set size");
        reg.describe_gauge("process_open_fds", "Open file descriptors");
        reg.describe_gauge("process_threads", "Operating system threads");
        reg.describe_gauge("process_start_time_seconds", "Start time of the process, seconds since the Unix epoch");
        reg.describe_counter("coupon_validations_total", "Validations by outcome: valid or the reason");
        reg.describe_gauge("cache_coupons", "Coupons in the current catalog snapshot");
        reg.describe_counter("cache_reloads_total", "Full reloads of the coupon catalog");
        reg.describe_counter("listener_reconnects_total", "Reconnections of the change listener");
        reg.describe_counter("cache_notifications_applied_total", "Coupon change notifications applied to the catalog");
        reg.describe_gauge("write_behind_queue_depth", "Rows waiting to be written, by queue");
        reg.describe_counter("write_behind_rows_total", "Rows leaving the write-behind queues, by table and outcome");
        reg.describe_histogram(
            "write_behind_flush_duration_seconds",
            Unit::Seconds,
            "Time to write one batch, by table",
        );

        let routes = Route::ALL.iter().map(|_| RouteMetrics { requests: Default::default() }).collect();
        let validations = std::iter::once("valid")
            .chain(Reason::ALL.iter().map(|r| r.as_str()))
            .map(|outcome| reg.counter("coupon_validations_total", &[("outcome", outcome)]))
            .collect();
        let validation_logs = reg.write_behind("validation_logs");
        let coupon_usage = reg.write_behind("coupon_usage");
        reg.describe_counter("coupon_redemptions_total", "Redeem calls by outcome: redeemed, replayed or the reason");
        reg.describe_counter("coupon_releases_total", "Release calls by outcome");
        reg.describe_counter(
            "coupon_lookups_refused_total",
            "Lookups refused (429) after too many unknown codes, by scope",
        );
        reg.describe_histogram(
            "journal_fsync_duration_seconds",
            Unit::Seconds,
            "Time of one journal write + fdatasync (a group commit)",
        );
        reg.describe_counter("journal_bytes_total", "Bytes appended to the journal");
        reg.describe_gauge("journal_backlog_records", "Journal records not yet confirmed in PostgreSQL");
        let redemptions = REDEEM_OUTCOMES
            .iter()
            .copied()
            .chain(Reason::ALL.iter().map(|r| r.as_str()))
            .map(|outcome| reg.counter("coupon_redemptions_total", &[("outcome", outcome)]))
            .collect();
        let releases = RELEASE_OUTCOMES
            .iter()
            .map(|outcome| reg.counter("coupon_releases_total", &[("outcome", outcome)]))
            .collect();
        Metrics {
            coupon_usage,
            journal: JournalMetrics {
                fsync_seconds: reg.histogram("journal_fsync_duration_seconds", &[]),
                bytes: reg.counter("journal_bytes_total", &[]),
            },
            journal_backlog: reg.gauge("journal_backlog_records", &[]),
            cache_age: reg.gauge("cache_age_seconds", &[]),
            pool_idle: reg.gauge("db_pool_connections", &[("state", "idle")]),
            pool_in_use: reg.gauge("db_pool_connections", &[("state", "in_use")]),
            pool_max: reg.gauge("db_pool_max_connections", &[]),
            refused_by_user: reg.counter("coupon_lookups_refused_total", &[("scope", "user")]),
            refused_by_ip: reg.counter("coupon_lookups_refused_total", &[("scope", "ip")]),
            process: ProcessMetrics {
                cpu_seconds: reg.counter("process_cpu_seconds_total", &[]),
                resident_bytes: reg.gauge("process_resident_memory_bytes", &[]),
                open_fds: reg.gauge("process_open_fds", &[]),
                threads: reg.gauge("process_threads", &[]),
                start_time: reg.gauge("process_start_time_seconds", &[]),
            },
            redemptions,
            releases,
            cache_coupons: reg.gauge("cache_coupons", &[]),
            cache_reloads: reg.counter("cache_reloads_total", &[]),
            notifications_applied: reg.counter("cache_notifications_applied_total", &[]),
            listener_reconnects: reg.counter("listener_reconnects_total", &[]),
            validation_logs,
            routes,
            validations,
            handle,
            recorder,
        }
    }

    /// Counts one answered request and its latency.
    pub fn record_request(&self, route: Route, status: u16, seconds: f64) {
        let route_idx = Route::ALL.iter().position(|r| *r == route).unwrap_or(0);
        let status_idx = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len());
        let (requests, duration) = self.routes[route_idx].requests[status_idx].get_or_init(|| {
            let status_label = STATUSES.get(status_idx).map_or_else(|| "other".to_owned(), u16::to_string);
            let labels = vec![Label::new("route", route.label()), Label::new("status", status_label)];
            let reg = Registrar(&self.recorder);
            (
                reg.counter_owned("http_requests_total", labels.clone()),
                reg.histogram_owned("http_request_duration_seconds", labels),
            )
        });
        requests.increment(1);
        duration.record(seconds);
    }

    /// Counts one validation outcome: `None` for valid.
    pub fn record_validation(&self, reason: Option<Reason>) {
        let idx = reason.map_or(0, |r| r.index() + 1);
        self.validations[idx].increment(1);
    }

    /// Counts one redeem outcome: an index into [`REDEEM_OUTCOMES`], or a reason.
    pub fn record_redemption(&self, outcome: Result<usize, Reason>) {
        let idx = match outcome {
            Ok(idx) => idx,
            Err(reason) => REDEEM_OUTCOMES.len() + reason.index(),
        };
        self.redemptions[idx].increment(1);
    }

    /// Counts one release outcome: an index into [`RELEASE_OUTCOMES`].
    pub fn record_release(&self, idx: usize) {
        self.releases[idx].increment(1);
    }

    /// The Prometheus text exposition of every metric, process metrics read just now.
    pub fn render(&self) -> String {
        self.process.refresh();
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; call every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// The standard `process_*` metrics, read from `/proc/self` when scraped (Linux only;
/// elsewhere they stay at zero).
struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_bytes: Gauge,
    open_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
}

impl ProcessMetrics {
    fn refresh(&self) {
        let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok() else { return };
        // Fields after the command name (which may hold spaces) start at field 3.
        let Some(fields) = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>()) else {
            return;
        };
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // Clock ticks and page size are 100 and 4096 on every Linux this runs on.
        let ticks = 100.0;
        self.cpu_seconds.absolute(((field(14) + field(15)) / ticks) as u64);
        self.threads.set(field(20));
        self.resident_bytes.set(field(24) * 4096.0);
        if let Some(boot) = boot_time() {
            self.start_time.set(boot + field(22) / ticks);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as f64);
        }
    }
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for WriteBehindMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteBehindMetrics")
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

struct Registrar<'a>(&'a PrometheusRecorder);

impl Registrar<'_> {
    fn metadata() -> Metadata<'static> {
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect();
        Key::from_parts(name, labels)
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.0.register_counter(&Self::key(name, labels), &Self::metadata())
    }

    fn counter_owned(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.0.register_counter(&Key::from_parts(name, labels), &Self::metadata())
    }

    fn histogram_owned(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.0.register_histogram(&Key::from_parts(name, labels), &Self::metadata())
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.0.register_gauge(&Self::key(name, labels), &Self::metadata())
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.0.register_histogram(&Self::key(name, labels), &Self::metadata())
    }

    fn write_behind(&self, table: &'static str) -> WriteBehindMetrics {
        let rows = |outcome| self.counter("write_behind_rows_total", &[("table", table), ("outcome", outcome)]);
        WriteBehindMetrics {
            written: rows("written"),
            spilled: rows("spilled"),
            dropped: rows("dropped"),
            flush_seconds: self.histogram("write_behind_flush_duration_seconds", &[("table", table)]),
            queue_depth: self.gauge("write_behind_queue_depth", &[("queue", table)]),
        }
    }

    fn describe_counter(&self, name: &'static str, help: &'static str) {
        self.0.describe_counter(KeyName::from_const_str(name), None, SharedString::const_str(help));
    }

    fn describe_gauge(&self, name: &'static str, help: &'static str) {
        self.0.describe_gauge(KeyName::from_const_str(name), None, SharedString::const_str(help));
    }

    fn describe_histogram(&self, name: &'static str, unit: Unit, help: &'static str) {
        self.0.describe_histogram(KeyName::from_const_str(name), Some(unit), SharedString::const_str(help));
    }
}
