//! Prometheus metrics: one recorder per service instance and pre-registered handles.
//!
//! Handles are registered up front, except one per (route, status) pair, registered on the
//! first answer with that status so that only statuses that happened are exported. Building
//! a key through the `metrics` macros costs ~25× a cached handle. Label sets are bounded:
//! route templates, status codes, outcomes; never a code, a campaign or a user id.

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::domain::rules::Reason;

/// Latency buckets, in seconds: 50 µs to 1 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Codes in one request (`stacking.max_codes` is at most 31).
const STACK_BUCKETS: [f64; 8] = [1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 16.0, 31.0];

/// Status codes the service answers with; anything else is counted as "other".
const STATUSES: [u16; 16] = [200, 201, 202, 400, 401, 404, 405, 408, 409, 413, 415, 422, 429, 431, 500, 503];

/// The label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

struct RouteMetrics {
    /// Registered on first use, so only statuses that happened are exported.
    requests: [OnceLock<(Counter, Histogram)>; STATUSES.len() + 1],
}

/// Counters for one write-behind table.
#[derive(Clone)]
pub struct WriteBehindMetrics {
    pub written: Counter,
    pub flush_seconds: Histogram,
    pub queue_depth: Gauge,
}

/// The validation log's write-behind, and what overflows its queue: rows spilled into the
/// journal, or dropped. Uses have no such outcomes: each is journalled before its answer.
#[derive(Clone)]
pub struct ValidationLogMetrics {
    pub rows: WriteBehindMetrics,
    pub spilled: Counter,
    pub dropped: Counter,
}

/// Journal write costs.
#[derive(Clone)]
pub struct JournalMetrics {
    pub fsync_seconds: Histogram,
    pub bytes: Counter,
}

/// Counters of one family, one per outcome label, registered up front.
pub struct Outcomes {
    counters: Vec<(&'static str, Counter)>,
}

impl Outcomes {
    /// Counts one `outcome`, which must be one of the labels registered.
    pub(crate) fn inc(&self, outcome: &str) {
        match self.counters.iter().find(|(label, _)| *label == outcome) {
            Some((_, counter)) => counter.increment(1),
            None => debug_assert!(false, "unregistered outcome {outcome}"),
        }
    }
}

/// Refusals of a use, beyond the rules' reasons.
const USE_REFUSALS: [&str; 4] = ["IDEMPOTENCY_MISMATCH", "TOO_MANY_HOLDS", "HOLD_SHARE_EXCEEDED", "QUOTA_UNAVAILABLE"];

/// Every metric of one service instance.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    route_labels: Vec<&'static str>,
    routes: Vec<RouteMetrics>,
    pub validations: Outcomes,
    /// Codes named by each request that names several (§10).
    pub stack_size: Histogram,
    pub redemptions: Outcomes,
    pub holds: Outcomes,
    pub releases: Outcomes,
    pub live_holds: Gauge,
    pub cache_coupons: Gauge,
    pub cache_reloads: Counter,
    pub notifications_applied: Counter,
    pub listener_reconnects: Counter,
    pub validation_logs: ValidationLogMetrics,
    pub coupon_usage: WriteBehindMetrics,
    pub journal: JournalMetrics,
    pub journal_backlog: Gauge,
    pub cache_age: Gauge,
    pub pool_idle: Gauge,
    pub pool_in_use: Gauge,
    pub pool_max: Gauge,
    pub refused_lookups: Outcomes,
    pub journal_rejected: Counter,
    pub archive_lookups: Counter,
    pub ledger_remembered: Gauge,
    pub ledger_forgotten: Gauge,
    pub journal_rejected_pending: Gauge,
    pub campaigns: CampaignMetrics,
    pub quota: QuotaMetrics,
    process: ProcessMetrics,
}

/// Several instances: how often a use waited on PostgreSQL, what the leases did.
pub struct QuotaMetrics {
    /// Uses that waited on PostgreSQL, by why: a lease ran out (`lease`), a limit only
    /// PostgreSQL counts (`claim`), another instance's use changed (`change`), a release of
    /// an order found nowhere yet waited for the others' shipping (`shipping`).
    pub waits: Outcomes,
    /// Lease grants and returns, by result (set from the leases' own counts when scraped).
    pub grants: Counter,
    pub empty_grants: Counter,
    pub failed_grants: Counter,
    pub returns: Counter,
    pub units_held: Gauge,
    /// Orders redeemed by two users on two instances at once; the later one lost.
    pub order_conflicts: Counter,
    /// Units counted without a lease to pay for them (a written-off instance came back).
    pub overrun: Counter,
    /// Uses of other instances merged into this ledger.
    pub merged: Counter,
    /// Claims sent to PostgreSQL, and the statements that carried them (`db::claims`).
    pub claims: Counter,
    pub claim_statements: Counter,
    /// Uses refused `503` because this instance could not prove it still holds its id
    /// (`engine::standing`).
    pub unproved: Counter,
}

/// Campaigns, aggregated (a label per campaign would grow without bound).
pub struct CampaignMetrics {
    pub count: Gauge,
    /// Live uses across every campaign.
    pub uses: Gauge,
    /// Discounts taken by those uses, in currency units.
    pub spent: Gauge,
    /// Campaigns whose cap or budget is used up.
    pub exhausted: Gauge,
    /// Bulk codes loaded.
    pub bulk_codes: Gauge,
}

impl Metrics {
    /// A fresh registry with a request counter per route label (`route_labels`, from the
    /// route table). Not installed globally, so several instances can live in one process.
    pub fn new(route_labels: &[&'static str]) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .set_buckets_for_metric(Matcher::Full("coupon_stack_size".into()), &STACK_BUCKETS)
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
        reg.describe_gauge("coupon_campaigns", "Campaigns in the catalog");
        reg.describe_gauge(
            "coupon_campaign_uses_live",
            "Live uses across every campaign, as this instance counts them",
        );
        reg.describe_gauge("coupon_campaign_spent", "Discounts taken by those uses, in currency units");
        reg.describe_gauge("coupon_campaigns_exhausted", "Campaigns whose usage limit or budget is used up");
        reg.describe_gauge("coupon_bulk_codes", "Bulk codes loaded");
        reg.describe_gauge("db_pool_connections", "Pool connections by state");
        reg.describe_gauge("db_pool_max_connections", "Pool size limit");
        reg.describe_counter("process_cpu_seconds_total", "CPU time used by the process, user and system");
        reg.describe_gauge("process_resident_memory_bytes", "Resident set size");
        reg.describe_gauge("process_virtual_memory_bytes", "Virtual memory size");
        reg.describe_gauge("process_open_fds", "Open file descriptors");
        reg.describe_gauge("process_max_fds", "Limit of open file descriptors");
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

        let mut route_labels = route_labels.to_vec();
        route_labels.push(UNMATCHED);
        let routes = route_labels.iter().map(|_| RouteMetrics { requests: Default::default() }).collect();
        let reasons = || Reason::ALL.iter().map(|r| r.as_str());
        let validations = reg.outcomes("coupon_validations_total", std::iter::once("valid").chain(reasons()));
        let rows =
            |outcome| reg.counter("write_behind_rows_total", &[("table", "validation_logs"), ("outcome", outcome)]);
        let validation_logs = ValidationLogMetrics {
            rows: reg.write_behind("validation_logs"),
            spilled: rows("spilled"),
            dropped: rows("dropped"),
        };
        let coupon_usage = reg.write_behind("coupon_usage");
        reg.describe_counter(
            "coupon_redemptions_total",
            "Redeem calls by outcome: redeemed, replayed, confirmed (a hold) or the refusal",
        );
        reg.describe_counter(
            "coupon_holds_total",
            "Holds by outcome: held, replayed, confirmed, cancelled, expired or the refusal",
        );
        reg.describe_gauge("coupon_holds_live", "Holds taken and not yet confirmed, cancelled or expired");
        reg.describe_counter("coupon_releases_total", "Release calls by outcome");
        reg.describe_counter(
            "journal_records_set_aside_total",
            "Journal records PostgreSQL refused for good, kept in DATA_DIR/rejected.jsonl",
        );
        reg.describe_gauge("journal_records_set_aside", "Set-aside journal records waiting for an operator");
        reg.describe_counter(
            "ledger_archive_lookups_total",
            "Orders looked up in PostgreSQL because the forgotten-order filter said maybe",
        );
        reg.describe_gauge(
            "ledger_remembered_redemptions",
            "Redemptions and holds the ledger remembers, released ones included",
        );
        reg.describe_gauge("ledger_forgotten_orders", "Released redemptions forgotten into the filter since start");
        reg.describe_counter(
            "coupon_lookups_refused_total",
            "Lookups refused (429) after too many unknown codes or orders, by scope: user, user_address, address",
        );
        reg.describe_histogram(
            "journal_fsync_duration_seconds",
            Unit::Seconds,
            "Time of one journal write + fdatasync (a group commit)",
        );
        reg.describe_counter("journal_bytes_total", "Bytes appended to the journal");
        reg.describe_gauge("journal_backlog_records", "Journal records not yet confirmed in PostgreSQL");
        let use_outcomes = |first: &'static [&'static str]| {
            first.iter().copied().chain(reasons()).chain(USE_REFUSALS).collect::<Vec<_>>()
        };
        let redemptions =
            reg.outcomes("coupon_redemptions_total", use_outcomes(&["redeemed", "replayed", "confirmed"]));
        let holds = reg
            .outcomes("coupon_holds_total", use_outcomes(&["held", "replayed", "confirmed", "cancelled", "expired"]));
        let releases = reg.outcomes("coupon_releases_total", ["released", "repeated", "not_found"]);
        reg.describe_histogram("coupon_stack_size", Unit::Count, "Codes named by one request naming several (codes)");
        reg.describe_counter(
            "quota_waits_total",
            "Uses that waited on PostgreSQL, by why (lease, claim, change, shipping)",
        );
        reg.describe_counter("quota_grants_total", "Quota lease grants, by result (granted, empty, failed)");
        reg.describe_counter("quota_returns_total", "Quota lease returns");
        reg.describe_gauge("quota_units_held", "Quota units this instance holds unspent");
        reg.describe_counter("order_conflicts_total", "Orders redeemed by two users on two instances at once");
        reg.describe_counter("quota_overrun_total", "Units counted without a lease to pay for them");
        reg.describe_counter("usage_merged_total", "Uses of other instances merged into this instance's ledger");
        reg.describe_counter("quota_claims_total", "Claims sent to PostgreSQL");
        reg.describe_counter("quota_claim_statements_total", "Statements that carried the claims (several share one)");
        reg.describe_counter(
            "quota_unproved_total",
            "Uses refused because this instance could not prove it still holds its id and epoch",
        );
        let quota = QuotaMetrics {
            waits: reg.labelled("quota_waits_total", "reason", ["lease", "claim", "change", "shipping"]),
            grants: reg.counter("quota_grants_total", &[("result", "granted")]),
            empty_grants: reg.counter("quota_grants_total", &[("result", "empty")]),
            failed_grants: reg.counter("quota_grants_total", &[("result", "failed")]),
            returns: reg.counter("quota_returns_total", &[]),
            units_held: reg.gauge("quota_units_held", &[]),
            order_conflicts: reg.counter("order_conflicts_total", &[]),
            overrun: reg.counter("quota_overrun_total", &[]),
            merged: reg.counter("usage_merged_total", &[]),
            claims: reg.counter("quota_claims_total", &[]),
            claim_statements: reg.counter("quota_claim_statements_total", &[]),
            unproved: reg.counter("quota_unproved_total", &[]),
        };
        Metrics {
            quota,
            holds,
            stack_size: reg.histogram("coupon_stack_size", &[]),
            live_holds: reg.gauge("coupon_holds_live", &[]),
            journal_rejected: reg.counter("journal_records_set_aside_total", &[]),
            archive_lookups: reg.counter("ledger_archive_lookups_total", &[]),
            ledger_remembered: reg.gauge("ledger_remembered_redemptions", &[]),
            ledger_forgotten: reg.gauge("ledger_forgotten_orders", &[]),
            journal_rejected_pending: reg.gauge("journal_records_set_aside", &[]),
            campaigns: CampaignMetrics {
                count: reg.gauge("coupon_campaigns", &[]),
                uses: reg.gauge("coupon_campaign_uses_live", &[]),
                spent: reg.gauge("coupon_campaign_spent", &[]),
                exhausted: reg.gauge("coupon_campaigns_exhausted", &[]),
                bulk_codes: reg.gauge("coupon_bulk_codes", &[]),
            },
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
            refused_lookups: reg.labelled(
                "coupon_lookups_refused_total",
                "scope",
                ["user", "user_address", "address", "validations"],
            ),
            process: ProcessMetrics {
                cpu_seconds: reg.counter("process_cpu_seconds_total", &[]),
                resident_bytes: reg.gauge("process_resident_memory_bytes", &[]),
                virtual_bytes: reg.gauge("process_virtual_memory_bytes", &[]),
                open_fds: reg.gauge("process_open_fds", &[]),
                max_fds: reg.gauge("process_max_fds", &[]),
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
            route_labels,
            routes,
            validations,
            handle,
            recorder,
        }
    }

    /// The index [`Metrics::record_request`] takes for requests that matched no route.
    pub fn unmatched(&self) -> usize {
        self.routes.len() - 1
    }

    /// Counts one answered request and its latency; `route` indexes the route labels given
    /// to [`Metrics::new`] ([`Metrics::unmatched`] for none).
    pub(crate) fn record_request(&self, route: usize, status: u16, seconds: f64) {
        let route = route.min(self.unmatched());
        let status_idx = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len());
        let (requests, duration) = self.routes[route].requests[status_idx].get_or_init(|| {
            let status_label = STATUSES.get(status_idx).map_or_else(|| "other".to_owned(), u16::to_string);
            let labels = vec![Label::new("route", self.route_labels[route]), Label::new("status", status_label)];
            let reg = Registrar(&self.recorder);
            (
                reg.counter_owned("http_requests_total", labels.clone()),
                reg.histogram_owned("http_request_duration_seconds", labels),
            )
        });
        requests.increment(1);
        duration.record(seconds);
    }

    /// The Prometheus text exposition of every metric, process metrics read just now.
    pub(crate) fn render(&self) -> String {
        self.process.refresh();
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; call every few seconds.
    pub(crate) fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// The standard `process_*` metrics, read (by `metrics-process`) when scraped.
struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
}

impl ProcessMetrics {
    fn refresh(&self) {
        let now = metrics_process::collector::collect();
        let set = |gauge: &Gauge, value: Option<u64>| {
            if let Some(value) = value {
                gauge.set(value as f64);
            }
        };
        if let Some(cpu) = now.cpu_seconds_total {
            self.cpu_seconds.absolute(cpu as u64);
        }
        set(&self.resident_bytes, now.resident_memory_bytes);
        set(&self.virtual_bytes, now.virtual_memory_bytes);
        set(&self.open_fds, now.open_fds);
        set(&self.max_fds, now.max_fds);
        set(&self.threads, now.threads);
        set(&self.start_time, now.start_time_seconds);
    }
}

impl std::fmt::Debug for WriteBehindMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteBehindMetrics")
    }
}

impl std::fmt::Debug for ValidationLogMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValidationLogMetrics")
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

    fn outcomes(&self, name: &'static str, labels: impl IntoIterator<Item = &'static str>) -> Outcomes {
        self.labelled(name, "outcome", labels)
    }

    fn labelled(
        &self,
        name: &'static str,
        key: &'static str,
        labels: impl IntoIterator<Item = &'static str>,
    ) -> Outcomes {
        Outcomes { counters: labels.into_iter().map(|label| (label, self.counter(name, &[(key, label)]))).collect() }
    }

    fn write_behind(&self, table: &'static str) -> WriteBehindMetrics {
        WriteBehindMetrics {
            written: self.counter("write_behind_rows_total", &[("table", table), ("outcome", "written")]),
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
