//! The JSON path of a validate request without sockets: parse + validate + serialise.

use std::hint::black_box;

use chrono::Utc;
use coupon_engine::cache::Cache;
use coupon_engine::domain::coupon::{Coupon, CouponKind, CouponStatus, Discount};
use coupon_engine::domain::money::Cents;
use coupon_engine::domain::rules::Attempt;
use coupon_engine::http::request::ValidateRequest;
use coupon_engine::http::response::ValidateResponse;
use criterion::{Criterion, criterion_group, criterion_main};

fn http_json(c: &mut Criterion) {
    let cache = Cache::new();
    cache.replace_all(vec![Coupon {
        id: 1,
        code: "SAVE10".into(),
        kind: CouponKind::TimeSpecific,
        status: CouponStatus::Active,
        discount: Discount::Percentage { hundredths: 1000, cap: Some(Cents::new(5_000).unwrap()) },
        min_order_value: Cents::ZERO,
        usage_limit: Some(1_000),
        per_user_limit: Some(2),
        user_id: None,
        valid_from: None,
        valid_until: None,
        version: 1,
    }]);
    let body = br#"{"code": "save10", "userId": "user_0000001", "orderValue": 1234.56, "orderId": "ord-1"}"#;
    let now = Utc::now();
    c.bench_function("http_json/parse_validate_serialise", |b| {
        b.iter(|| {
            let input = ValidateRequest::parse(black_box(body)).unwrap();
            let attempt = Attempt {
                user_id: &input.user_id,
                order_value: input.order_value,
                order_id: input.order_id.as_deref(),
            };
            let validation = cache.validate(&input.code, &attempt, now);
            let response = ValidateResponse::new(&input.code, input.order_value, validation.decision);
            black_box(serde_json::to_vec(&response).unwrap())
        })
    });
}

criterion_group!(benches, http_json);
criterion_main!(benches);
