//! Request mixes built from the seeded database: valid, expired, inactive, wrong-user,
//! below-minimum and unknown codes, unused single-use codes of campaigns, and redeems;
//! shuffled reproducibly by seed.

use anyhow::{Context, bail};
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use sqlx::{Connection, PgConnection};

/// The coupon redeems go to: unlimited, created by the load generator if missing.
pub(crate) const REDEEM_CODE: &str = "LOADGEN-REDEEM";
/// The coupon checkout holds go to, likewise.
pub(crate) const HOLD_CODE: &str = "LOADGEN-HOLD";
/// The usage limit of the coupon of the `limited-redeem` mix.
pub(crate) const LIMITED_USES: u32 = 100_000;
/// How long a checkout hold lasts: abandoned ones expire during longer runs.
const HOLD_TTL_SECS: u64 = 60;
/// One checkout hold in this many is abandoned; the others are confirmed by a redeem.
const ABANDON_ONE_IN: u64 = 4;
/// Requests prepared per kind; the run cycles through them.
const PER_KIND: usize = 500;
/// Single-use codes imported for a `code-redeem` run (a new batch per run): request `n`
/// redeems code `n` modulo this, so a run of more requests meets used codes.
pub(crate) const BULK_CODES: u64 = 120_000;

/// What a request is and what the service must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Valid,
    Expired,
    Inactive,
    WrongUser,
    BelowMinimum,
    Unknown,
    /// An unused, unassigned bulk code of an active campaign (`seed --campaign-codes`).
    CampaignCode,
    Redeem,
    /// A redeem of a coupon with a usage limit of [`LIMITED_USES`] (a new one per run): its
    /// uses come from quota leases.
    LimitedRedeem,
    /// A redeem of a coupon with a per-user limit of 1, by a new user each time: PostgreSQL
    /// decides each one.
    PerUserRedeem,
    /// A redeem of a single-use bulk code, a different one each time (a batch of
    /// [`BULK_CODES`] imported per run): PostgreSQL decides each one among instances.
    CodeRedeem,
    /// A checkout: a hold, then (most of the time) its confirmation, a redeem of the same order.
    Hold,
    /// The redeem that confirms a checkout's hold.
    Confirm,
    /// A validate of a 20-line cart (drawn from the seed's catalogue) against a coupon that
    /// targets carts: a scoped percentage, a fixed amount off each unit, or buy 2 get 1.
    Cart,
    /// A validate of three codes stacked on a 20-line cart (API.md §10): a scoped percentage
    /// off items, a percentage off the order, free shipping.
    Stack,
    /// A redeem of the same three codes as one set, for a new order each time.
    StackRedeem,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Expired => "expired",
            Kind::Inactive => "inactive",
            Kind::WrongUser => "wrong-user",
            Kind::BelowMinimum => "below-minimum",
            Kind::Unknown => "unknown",
            Kind::CampaignCode => "campaign-code",
            Kind::Redeem => "redeem",
            Kind::LimitedRedeem => "limited-redeem",
            Kind::PerUserRedeem => "per-user-redeem",
            Kind::CodeRedeem => "code-redeem",
            Kind::Hold => "hold",
            Kind::Confirm => "confirm",
            Kind::Cart => "cart",
            Kind::Stack => "stack",
            Kind::StackRedeem => "stack-redeem",
        }
    }

    /// A fragment every correct answer to this kind contains.
    fn expected(self) -> &'static [u8] {
        match self {
            Kind::Valid | Kind::CampaignCode => br#""valid":true"#,
            Kind::Expired => b"COUPON_EXPIRED",
            Kind::Inactive => b"COUPON_INACTIVE",
            Kind::WrongUser => b"COUPON_NOT_FOR_USER",
            Kind::BelowMinimum => b"MIN_ORDER_VALUE_NOT_MET",
            Kind::Unknown => b"COUPON_NOT_FOUND",
            Kind::Redeem | Kind::PerUserRedeem | Kind::CodeRedeem => br#""redeemed":true"#,
            Kind::LimitedRedeem => br#""redeemed""#,
            Kind::Hold => br#""held":true"#,
            Kind::Confirm => br#""hold":"confirmed""#,
            // Valid or not (a random cart may hold nothing in scope), a cart's answer has lines.
            Kind::Cart => br#""lines":[{"lineId""#,
            // Every code of the set applies to any cart of the catalogue (shipping is 4.99).
            Kind::Stack => {
                br#""valid":true,"codes":["LOADGEN-STACK-ITEMS","LOADGEN-STACK-ORDER","LOADGEN-STACK-SHIP"]"#
            }
            Kind::StackRedeem => br#""redeemed":true"#,
        }
    }
}

/// One prepared request.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) kind: Kind,
    /// For a redeem, the body up to the order id; for an unknown code, up to the user id:
    /// both are made unique per request. A redeem needs a new order each time, and a user
    /// guessing codes over and over would rightly be stopped by the service.
    body: Bytes,
}

/// The requests of a run, in a seeded order.
#[derive(Debug, Clone)]
pub(crate) struct Mix {
    requests: Vec<Prepared>,
    run_id: String,
}

/// Named mixes: kinds and their weights.
pub(crate) fn weights(name: &str) -> anyhow::Result<Vec<(Kind, u32)>> {
    Ok(match name {
        "validate" => vec![
            (Kind::Valid, 50),
            (Kind::Expired, 10),
            (Kind::Inactive, 10),
            (Kind::WrongUser, 10),
            (Kind::BelowMinimum, 10),
            (Kind::Unknown, 10),
            (Kind::CampaignCode, 10),
        ],
        "valid" => vec![(Kind::Valid, 1)],
        "campaign" => vec![(Kind::CampaignCode, 1)],
        "redeem" => vec![(Kind::Redeem, 1)],
        "limited-redeem" => vec![(Kind::LimitedRedeem, 1)],
        "per-user-redeem" => vec![(Kind::PerUserRedeem, 1)],
        "code-redeem" => vec![(Kind::CodeRedeem, 1)],
        "cart" => vec![(Kind::Cart, 1)],
        // Several codes on one order: three in four validates, one in four the set redeemed.
        "stack" => vec![(Kind::Stack, 3), (Kind::StackRedeem, 1)],
        "checkout" => {
            vec![
                (Kind::Valid, 55),
                (Kind::CampaignCode, 5),
                (Kind::Expired, 5),
                (Kind::Unknown, 5),
                (Kind::WrongUser, 5),
                (Kind::Redeem, 15),
                (Kind::Hold, 10),
            ]
        }
        // Every redeeming shape at once: unlimited, a limited total, a per-user limit, holds
        // and their confirmations (the outage drill's default).
        "shapes" => vec![
            (Kind::Valid, 40),
            (Kind::Redeem, 15),
            (Kind::LimitedRedeem, 15),
            (Kind::PerUserRedeem, 15),
            (Kind::Hold, 15),
        ],
        other => bail!(
            "unknown mix {other:?}: use validate, valid, campaign, redeem, limited-redeem, per-user-redeem, code-redeem, cart, stack, checkout or shapes"
        ),
    })
}

impl Mix {
    /// Builds the named mix from the coupons in `database_url`.
    pub(crate) async fn build(database_url: &str, name: &str, seed: u64) -> anyhow::Result<Mix> {
        let mut weights = weights(name)?;
        let mut db = PgConnection::connect(database_url).await.context("connect to DATABASE_URL to build the mix")?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut by_kind = Vec::new();
        let mut kept = Vec::new();
        for (kind, weight) in weights.drain(..) {
            let prepared = prepare(&mut db, database_url, kind, &mut rng).await?;
            if prepared.is_empty() && kind == Kind::CampaignCode && name != "campaign" {
                eprintln!(
                    "loadgen: no unused campaign code in the database (seed --campaign-codes N adds some): none in the mix"
                );
                continue;
            }
            by_kind.push(prepared);
            kept.push((kind, weight));
        }
        let weights = kept;
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        let n = (PER_KIND * weights.len()).max(1000);
        let mut requests = Vec::with_capacity(n);
        for idx in 0..n {
            // Deterministic proportions: slot idx of every `total` goes to the kind owning it.
            let mut slot = (idx as u32) % total;
            let kind_idx = weights
                .iter()
                .position(|(_, w)| {
                    if slot < *w {
                        true
                    } else {
                        slot -= w;
                        false
                    }
                })
                .unwrap_or(0);
            let pool = &by_kind[kind_idx];
            requests.push(pool[rng.random_range(0..pool.len())].clone());
        }
        requests.shuffle(&mut rng);
        let run_id =
            format!("{:x}", rng.random::<u64>() ^ u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0));
        Ok(Mix { requests, run_id })
    }

    /// The `n`th request: path, body, and the kind it is.
    pub(crate) fn request(&self, n: u64) -> (&'static str, Bytes, Kind) {
        let prepared = &self.requests[(n % self.requests.len() as u64) as usize];
        let unique = || {
            let mut body = prepared.body.to_vec();
            body.extend_from_slice(format!("lg-{}-{n}\"}}", self.run_id).as_bytes());
            Bytes::from(body)
        };
        match prepared.kind {
            Kind::Hold => {
                let body = format!(
                    r#"{}{},"ttlSeconds":{HOLD_TTL_SECS}}}"#,
                    String::from_utf8_lossy(&prepared.body),
                    self.checkout_ids(n)
                );
                ("/api/coupons/hold", Bytes::from(body), Kind::Hold)
            }
            Kind::PerUserRedeem => {
                let body = format!("{}{}}}", String::from_utf8_lossy(&prepared.body), self.checkout_ids(n));
                ("/api/coupons/redeem", Bytes::from(body), Kind::PerUserRedeem)
            }
            Kind::CodeRedeem => {
                // The prepared body is the batch's code prefix.
                let prefix = String::from_utf8_lossy(&prepared.body);
                let body =
                    format!(r#"{{"code":"{prefix}{:06}","orderValue":100,{}}}"#, n % BULK_CODES, self.checkout_ids(n));
                ("/api/coupons/redeem", Bytes::from(body), Kind::CodeRedeem)
            }
            kind @ (Kind::Redeem | Kind::LimitedRedeem | Kind::StackRedeem) => ("/api/coupons/redeem", unique(), kind),
            Kind::Unknown => ("/api/coupons/validate", unique(), Kind::Unknown),
            kind => ("/api/coupons/validate", prepared.body.clone(), kind),
        }
    }

    /// Waits until every instance behind `client` serves the mix's bulk codes (imported just
    /// now, they reach each catalog by notification): ten answers in a row that know the
    /// first and the last code.
    pub(crate) async fn wait_served(&self, client: &crate::client::ServiceClient) -> anyhow::Result<()> {
        let Some(prefix) = self.requests.iter().find(|r| r.kind == Kind::CodeRedeem).map(|r| r.body.clone()) else {
            return Ok(());
        };
        let prefix = String::from_utf8_lossy(&prefix).into_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut in_a_row = 0;
        while in_a_row < 10 {
            anyhow::ensure!(std::time::Instant::now() < deadline, "the bulk codes {prefix}* are not served after 60 s");
            let n = if in_a_row % 2 == 0 { 0 } else { BULK_CODES - 1 };
            let body = json!({"code": format!("{prefix}{n:06}"), "userId": "loadgen-probe", "orderValue": 100});
            if client.validate(&body).await?["valid"] == true {
                in_a_row += 1;
            } else {
                in_a_row = 0;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// What to send once request `n` (of `kind`) got a 201: a checkout's confirmation, unless
    /// this checkout is one of those abandoned.
    pub(crate) fn follow_up(&self, n: u64, kind: Kind) -> Option<(&'static str, Bytes, Kind)> {
        if kind != Kind::Hold || n.is_multiple_of(ABANDON_ONE_IN) {
            return None;
        }
        let prepared = &self.requests[(n % self.requests.len() as u64) as usize];
        let body = format!("{}{}}}", String::from_utf8_lossy(&prepared.body), self.checkout_ids(n));
        Some(("/api/coupons/redeem", Bytes::from(body), Kind::Confirm))
    }

    /// The user and order of checkout `n`: new for each (a user may hold only a few at once).
    fn checkout_ids(&self, n: u64) -> String {
        format!(r#""userId":"lg-{run}-{n}","orderId":"lg-{run}-{n}""#, run = self.run_id)
    }

    /// Whether an answer is the one this kind must get.
    pub(crate) fn is_expected(kind: Kind, status: u16, body: &[u8]) -> bool {
        let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        if kind == Kind::LimitedRedeem {
            // Sold out once the limit is reached: that is a right answer too.
            return status == 201 || (status == 422 && contains(b"USAGE_LIMIT_REACHED"));
        }
        let status_ok = if matches!(
            kind,
            Kind::Redeem | Kind::PerUserRedeem | Kind::CodeRedeem | Kind::Hold | Kind::Confirm | Kind::StackRedeem
        ) {
            status == 201
        } else {
            status == 200
        };
        status_ok && body.windows(kind.expected().len()).any(|w| w == kind.expected())
    }
}

fn validate_body(code: &str, user: &str, order_cents: i64) -> Prepared {
    let body =
        format!(r#"{{"code":{},"userId":{},"orderValue":{}}}"#, json!(code), json!(user), order_value(order_cents));
    Prepared { kind: Kind::Valid, body: Bytes::from(body) }
}

/// The JSON number text of an amount in cents, exact.
fn order_value(cents: i64) -> String {
    if cents % 100 == 0 { format!("{}", cents / 100) } else { format!("{}.{:02}", cents / 100, cents % 100) }
}

async fn prepare(
    db: &mut PgConnection,
    database_url: &str,
    kind: Kind,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Vec<Prepared>> {
    // A batch's rule is a coupon row too, but its code is not one a customer can type; a
    // coupon that targets carts answers ITEMS_REQUIRED to these bodies, which carry none.
    const IN_WINDOW: &str = "batch_id IS NULL AND target = 'order' AND scope IS NULL AND min_quantity IS NULL \
        AND min_order_basis = 'order' AND currency IS NULL AND discount_type IN ('percentage', 'fixed') \
        AND (valid_from IS NULL OR valid_from <= now()) AND (valid_until IS NULL OR valid_until > now())";
    let other_user = |rng: &mut ChaCha8Rng| format!("user_{:07}", rng.random_range(0..1_000_000));
    let rows: Vec<(String, Option<String>, i64)> = match kind {
        Kind::Valid => fetch(db, &format!(
            "SELECT code, user_id, (min_order_value * 100)::bigint FROM coupons c WHERE status = 'active' AND {IN_WINDOW} \
             AND usage_limit IS NULL AND per_user_limit IS NULL ORDER BY id LIMIT 2000"
        )).await?,
        Kind::Expired => fetch(db, "SELECT code, user_id, 0::bigint FROM coupons WHERE status = 'expired' AND batch_id IS NULL ORDER BY id LIMIT 2000").await?,
        Kind::Inactive => fetch(db, "SELECT code, user_id, 0::bigint FROM coupons WHERE status = 'inactive' AND batch_id IS NULL ORDER BY id LIMIT 2000").await?,
        Kind::WrongUser => fetch(db, &format!(
            "SELECT code, user_id, 0::bigint FROM coupons WHERE status = 'active' AND {IN_WINDOW} AND user_id IS NOT NULL ORDER BY id LIMIT 2000"
        )).await?,
        Kind::BelowMinimum => fetch(db, &format!(
            "SELECT code, user_id, (min_order_value * 100)::bigint FROM coupons WHERE status = 'active' AND {IN_WINDOW} \
             AND min_order_value >= 1 ORDER BY id LIMIT 2000"
        )).await?,
        Kind::Unknown => (0..PER_KIND).map(|n| (format!("LOADGEN-UNKNOWN-{n:05}"), None, 0)).collect(),
        Kind::CodeRedeem => return Ok(vec![import_bulk_codes(database_url).await?]),
        Kind::Cart => return cart_bodies(db, rng).await,
        kind @ (Kind::Stack | Kind::StackRedeem) => return stack_bodies(db, kind, rng).await,
        Kind::CampaignCode => {
            let rows = fetch(
                db,
                "SELECT b.code, NULL::text, (r.min_order_value * 100)::bigint FROM code_batches cb \
                 JOIN coupons r ON r.id = cb.rule_id JOIN campaigns c ON c.id = cb.campaign_id \
                 JOIN LATERAL (SELECT code FROM batch_codes WHERE batch_id = cb.id AND assigned_to IS NULL \
                               ORDER BY position LIMIT 2000) b ON true \
                 WHERE cb.status = 'done' AND r.status = 'active' AND c.status = 'active' \
                   AND (r.valid_from IS NULL OR r.valid_from <= now()) AND (r.valid_until IS NULL OR r.valid_until > now()) \
                   AND (c.valid_from IS NULL OR c.valid_from <= now()) AND (c.valid_until IS NULL OR c.valid_until > now()) \
                   AND c.usage_limit IS NULL AND c.budget IS NULL AND c.per_user_limit IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM coupon_usage u WHERE u.coupon_id = r.id AND u.code = b.code) \
                 ORDER BY cb.id LIMIT 2000"
            )
            .await?;
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            rows
        }
        Kind::Redeem | Kind::Hold | Kind::Confirm => {
            let code = if kind == Kind::Redeem { REDEEM_CODE } else { HOLD_CODE };
            sqlx::query(
                "INSERT INTO coupons (code, type, discount_type, discount_value) \
                 VALUES ($1, 'time_specific', 'percentage', 10) ON CONFLICT (code) DO NOTHING",
            )
            .bind(code)
            .execute(&mut *db)
            .await?;
            vec![(code.to_owned(), None, 0)]
        }
        Kind::LimitedRedeem | Kind::PerUserRedeem => {
            // A fresh coupon per run, so that every run starts with its whole limit.
            let code = format!(
                "LOADGEN-{}-{:X}",
                if kind == Kind::LimitedRedeem { "LIMITED" } else { "PER-USER" },
                chrono::Utc::now().timestamp_micros()
            );
            let (usage_limit, per_user_limit) =
                if kind == Kind::LimitedRedeem { (Some(i64::from(LIMITED_USES)), None) } else { (None, Some(1i64)) };
            sqlx::query(
                "INSERT INTO coupons (code, type, discount_type, discount_value, usage_limit, per_user_limit) \
                 VALUES ($1, 'time_specific', 'percentage', 10, $2, $3)",
            )
            .bind(&code)
            .bind(usage_limit)
            .bind(per_user_limit)
            .execute(&mut *db)
            .await?;
            vec![(code, None, 0)]
        }
    };
    if rows.is_empty() {
        bail!("the database has no coupon for a {:?} request: seed it first (coupon-engine seed)", kind.name());
    }
    let prepared = rows
        .into_iter()
        .take(PER_KIND)
        .map(|(code, owner, min_cents)| {
            let mut request = match kind {
                Kind::Valid | Kind::CampaignCode => validate_body(
                    &code,
                    &owner.unwrap_or_else(|| other_user(rng)),
                    min_cents.max(100) + rng.random_range(0..50_000),
                ),
                Kind::WrongUser => {
                    let owner = owner.unwrap_or_default();
                    let mut user = other_user(rng);
                    while user == owner {
                        user = other_user(rng);
                    }
                    validate_body(&code, &user, 10_000)
                }
                Kind::BelowMinimum => validate_body(&code, &owner.unwrap_or_else(|| other_user(rng)), min_cents - 1),
                Kind::Redeem | Kind::LimitedRedeem => {
                    let head =
                        format!(r#"{{"code":"{code}","userId":"{}","orderValue":100,"orderId":""#, other_user(rng));
                    Prepared { kind, body: Bytes::from(head) }
                }
                Kind::Unknown => {
                    Prepared { kind, body: Bytes::from(format!(r#"{{"code":"{code}","orderValue":100,"userId":""#)) }
                }
                // The ids (and, for the hold, its ttl) are added per checkout.
                Kind::Hold | Kind::Confirm | Kind::PerUserRedeem => {
                    Prepared { kind, body: Bytes::from(format!(r#"{{"code":"{code}","orderValue":100,"#)) }
                }
                _ => validate_body(&code, &owner.unwrap_or_else(|| other_user(rng)), 10_000),
            };
            request.kind = kind;
            request
        })
        .collect();
    Ok(prepared)
}

/// The coupons of the `cart` mix, created if missing (the seed's `CART-…` coupons depend on
/// their random scopes; these are fixed): code, discount type, value, scope, buy-X-get-Y.
const CART_COUPONS: [(&str, &str, u32, &str, Option<&str>); 3] = [
    (
        "LOADGEN-CART-PCT",
        "percentage",
        15,
        r#"{"includeCategories": ["cat-00", "cat-01", "cat-02"], "excludeOnSale": true}"#,
        None,
    ),
    ("LOADGEN-CART-EACH", "fixed", 2, r#"{"includeCategories": ["cat-03", "cat-04"]}"#, None),
    (
        "LOADGEN-CART-B2G1",
        "buy_x_get_y",
        0,
        r#"{"includeCategories": ["cat-05", "cat-06"]}"#,
        Some(r#"{"buyQuantity": 2, "getQuantity": 1, "maxApplications": 3}"#),
    ),
];

/// Lines in a cart of the `cart` mix.
pub(crate) const CART_LINES: usize = 20;

/// A validate body with a cart of [`CART_LINES`] lines drawn from the seed's catalogue, for
/// `code`.
pub(crate) fn cart_body(code: &str, user: &str, rng: &mut impl Rng) -> String {
    let catalogue = coupon_engine::seed::catalogue();
    let items: Vec<serde_json::Value> = (0..CART_LINES)
        .map(|line| {
            let product = &catalogue[rng.random_range(0..catalogue.len())];
            let mut item = json!({
                "lineId": format!("{line}"),
                "productId": product.id,
                "categoryIds": [product.category],
                "quantity": rng.random_range(1..=3),
                "unitPrice": serde_json::value::RawValue::from_string(product.unit_price.to_string()).expect("a number"),
            });
            if let Some(variant) = &product.variant_id {
                item["variantId"] = json!(variant);
            }
            if product.on_sale {
                item["onSale"] = json!(true);
            }
            item
        })
        .collect();
    json!({"code": code, "userId": user, "items": items, "shipping": {"amount": 4.99}}).to_string()
}

async fn cart_bodies(db: &mut PgConnection, rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<Prepared>> {
    for (code, discount_type, value, scope, bxgy) in CART_COUPONS {
        let allocation = if discount_type == "fixed" { "each" } else { "across" };
        sqlx::query(
            "INSERT INTO coupons (code, type, discount_type, discount_value, target, scope, allocation, bxgy) \
             VALUES ($1, 'time_specific', $2, $3, 'items', $4::jsonb, $5, $6::jsonb) ON CONFLICT (code) DO NOTHING",
        )
        .bind(code)
        .bind(discount_type)
        .bind(i64::from(value))
        .bind(scope)
        .bind(allocation)
        .bind(bxgy)
        .execute(&mut *db)
        .await?;
    }
    Ok((0..PER_KIND)
        .map(|n| {
            let code = CART_COUPONS[n % CART_COUPONS.len()].0;
            let user = format!("user_{:07}", rng.random_range(0..1_000_000));
            Prepared { kind: Kind::Cart, body: Bytes::from(cart_body(code, &user, rng)) }
        })
        .collect())
}

/// The codes of the `stack` mix, created if missing; each combines with every class.
const STACK_COUPONS: [(&str, &str, u32, &str, Option<&str>); 3] = [
    // Nine categories of ten: a 20-line cart has one of them but once in 10^20.
    ("LOADGEN-STACK-ITEMS", "percentage", 20, "items", Some(r#"{"excludeCategories": ["cat-09"]}"#)),
    ("LOADGEN-STACK-ORDER", "percentage", 10, "order", None),
    ("LOADGEN-STACK-SHIP", "free_shipping", 0, "shipping", None),
];

async fn stack_bodies(db: &mut PgConnection, kind: Kind, rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<Prepared>> {
    for (code, discount_type, value, target, scope) in STACK_COUPONS {
        sqlx::query(
            "INSERT INTO coupons (code, type, discount_type, discount_value, target, scope, combines_with) \
             VALUES ($1, 'time_specific', $2, $3, $4, $5::jsonb, '{item,order,shipping}') ON CONFLICT (code) DO NOTHING",
        )
        .bind(code)
        .bind(discount_type)
        .bind(i64::from(value))
        .bind(target)
        .bind(scope)
        .execute(&mut *db)
        .await?;
    }
    let codes: Vec<&str> = STACK_COUPONS.iter().map(|c| c.0).collect();
    Ok((0..PER_KIND)
        .map(|_| {
            let user = format!("user_{:07}", rng.random_range(0..1_000_000));
            let mut body: serde_json::Value = serde_json::from_str(&cart_body("", &user, rng)).expect("a cart body");
            let object = body.as_object_mut().expect("an object");
            object.remove("code");
            object.insert("codes".into(), json!(codes));
            let mut body = body.to_string();
            if kind == Kind::StackRedeem {
                // Up to the order id, which each request makes its own.
                body.pop();
                body.push_str(r#","orderId":""#);
            }
            Prepared { kind, body: Bytes::from(body) }
        })
        .collect())
}

/// A new campaign with one batch of [`BULK_CODES`] single-use codes (10% off), imported as
/// the admin API would; answers the codes' prefix as the prepared request.
async fn import_bulk_codes(database_url: &str) -> anyhow::Result<Prepared> {
    use coupon_engine::db::{batches, campaigns};
    use coupon_engine::domain::campaign::Campaign;
    use coupon_engine::domain::coupon::{Coupon, CouponKind, Discount};
    let pool = sqlx::PgPool::connect(database_url).await.context("connect to DATABASE_URL for the bulk codes")?;
    let run = format!("{:X}", chrono::Utc::now().timestamp_micros());
    let campaign = campaigns::insert(&pool, &Campaign::new(0, &format!("loadgen-codes-{run}")))
        .await
        .map_err(|err| anyhow::anyhow!("creating the bulk codes' campaign: {err}"))?;
    let ten_percent = Discount::Percentage {
        rate: coupon_engine::domain::money::Percent::from_hundredths(1_000).expect("10%"),
        cap: None,
    };
    let rule = Coupon {
        campaign_id: Some(campaign.id),
        version: 0,
        ..Coupon::new(0, "", CouponKind::TimeSpecific, ten_percent)
    };
    let prefix = format!("LGC{run}-");
    let source = batches::Source::Imported((0..BULK_CODES).map(|n| format!("{prefix}{n:06}")).collect());
    let claimed = batches::claim(&pool, campaign.id, &rule, 1, &source)
        .await
        .map_err(|err| anyhow::anyhow!("creating the bulk codes' batch: {err}"))?;
    let produced = std::sync::atomic::AtomicU64::new(0);
    match claimed.write(&source, &produced).await? {
        batches::Outcome::Done => {}
        other => bail!("importing the bulk codes: {other:?}"),
    }
    pool.close().await;
    Ok(Prepared { kind: Kind::CodeRedeem, body: Bytes::from(prefix) })
}

async fn fetch(db: &mut PgConnection, sql: &str) -> anyhow::Result<Vec<(String, Option<String>, i64)>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(db).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_answers_are_recognised() {
        assert!(Mix::is_expected(Kind::Valid, 200, br#"{"valid":true,"code":"A"}"#));
        assert!(!Mix::is_expected(Kind::Valid, 200, br#"{"valid":false,"reason":"COUPON_EXPIRED"}"#));
        assert!(Mix::is_expected(Kind::Expired, 200, br#"{"valid":false,"reason":"COUPON_EXPIRED"}"#));
        assert!(!Mix::is_expected(Kind::Redeem, 200, br#"{"redeemed":true}"#), "a replay is not a new redemption");
        assert!(Mix::is_expected(Kind::Redeem, 201, br#"{"redeemed":true}"#));
    }

    #[test]
    fn cart_bodies_are_what_the_service_takes() {
        use coupon_engine::domain::currency::Currency;
        use coupon_engine::http::cart_input::CartLimits;
        use coupon_engine::http::request::ValidateBody;
        let body = cart_body("LOADGEN-CART-PCT", "user_0000001", &mut ChaCha8Rng::seed_from_u64(1));
        let limits = CartLimits {
            default_currency: Currency::parse("EUR").unwrap(),
            max_lines: 100,
            max_codes: 5,
            max_body_bytes: 64 << 10,
        };
        let parsed = ValidateBody::parse(body.as_bytes(), limits).expect("a valid body");
        let cart = parsed.cart.expect("a cart");
        assert_eq!((cart.cart.lines.len(), cart.cart.shipping), (CART_LINES, Some(499)));
        assert!(Mix::is_expected(Kind::Cart, 200, br#"{"valid":false,"lines":[{"lineId":"0"}]}"#));
        assert!(!Mix::is_expected(Kind::Cart, 200, br#"{"valid":true,"discount":1}"#));
    }

    #[test]
    fn amounts_are_exact_json_numbers() {
        assert_eq!(order_value(100_000), "1000");
        assert_eq!(order_value(1999), "19.99");
        assert_eq!(order_value(5), "0.05");
    }

    #[test]
    fn checkouts_hold_then_mostly_confirm_the_same_order() {
        let mix = Mix {
            requests: vec![Prepared {
                kind: Kind::Hold,
                body: Bytes::from_static(br#"{"code":"H","orderValue":100,"#),
            }],
            run_id: "r".into(),
        };
        let (path, hold, kind) = mix.request(5);
        assert_eq!((path, kind), ("/api/coupons/hold", Kind::Hold));
        let hold: serde_json::Value = serde_json::from_slice(&hold).unwrap();
        assert_eq!(hold["ttlSeconds"], HOLD_TTL_SECS);
        let (path, confirm, kind) = mix.follow_up(5, Kind::Hold).expect("confirmed");
        assert_eq!((path, kind), ("/api/coupons/redeem", Kind::Confirm));
        let confirm: serde_json::Value = serde_json::from_slice(&confirm).unwrap();
        assert_eq!((&confirm["orderId"], &confirm["userId"]), (&hold["orderId"], &hold["userId"]));
        assert!(confirm.get("ttlSeconds").is_none());
        assert!(mix.follow_up(4, Kind::Hold).is_none(), "one in four abandoned");
        assert!(mix.follow_up(5, Kind::Redeem).is_none());
        assert!(Mix::is_expected(Kind::Confirm, 201, br#"{"redeemed":true,"hold":"confirmed"}"#));
        assert!(!Mix::is_expected(Kind::Confirm, 201, br#"{"redeemed":true,"hold":"expired"}"#));
    }

    #[test]
    fn redeem_bodies_get_unique_order_ids() {
        let mix = Mix {
            requests: vec![Prepared { kind: Kind::Redeem, body: Bytes::from_static(br#"{"code":"X","orderId":""#) }],
            run_id: "r".into(),
        };
        let (path, first, _) = mix.request(1);
        let (_, second, _) = mix.request(2);
        assert_eq!(path, "/api/coupons/redeem");
        assert_ne!(first, second);
        assert!(serde_json::from_slice::<serde_json::Value>(&first).is_ok());
    }
}
