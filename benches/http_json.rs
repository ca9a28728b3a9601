//! The JSON path of a validate request without sockets: parse, validate, serialise.

mod support;

use std::hint::black_box;
use std::time::Instant;

use coupon_engine::domain::currency::Currency;
use coupon_engine::engine::{Caller, ValidateRequest};
use coupon_engine::http::cart_input::CartLimits;
use coupon_engine::http::handlers::public::ValidateResponse;
use coupon_engine::http::request::ValidateBody;
use criterion::{Criterion, criterion_group, criterion_main};

fn http_json(c: &mut Criterion) {
    let coupons = support::coupons(100);
    let code = coupons[1].code.to_lowercase();
    let engine = support::engine_with(coupons);
    let body = format!(r#"{{"code": "{code}", "userId": "user_0000001", "orderValue": 1234.56, "orderId": "ord-1"}}"#);
    let caller = Caller { ip: None, user_agent: None, started: Instant::now() };
    let limits = CartLimits {
        default_currency: Currency::parse("EUR").expect("EUR"),
        max_lines: 100,
        max_codes: 5,
        max_body_bytes: 64 << 10,
    };
    c.bench_function("http_json/parse_validate_serialise", |b| {
        b.iter(|| {
            let input = ValidateBody::parse(black_box(body.as_bytes()), limits).unwrap();
            let request = ValidateRequest {
                code: input.codes.one().expect("one code"),
                user_id: &input.user_id,
                order_value: input.order_value,
                order_id: input.order_id.as_deref(),
                cart: None,
            };
            let validation = engine.validate(&request, &caller);
            let response = ValidateResponse::new(&validation.code, input.order_value, validation.decision);
            black_box(serde_json::to_vec(&response).unwrap())
        })
    });
    // A 20-line cart from the seed's catalogue (as loadgen's cart mix sends), in its three
    // parts: the parse, the engine, the answer.
    let catalogue = coupon_engine::seed::catalogue();
    let items: Vec<String> = (0..20)
        .map(|i| {
            let p = &catalogue[i * 7 % catalogue.len()];
            format!(
                r#"{{"lineId":"{i}","productId":"{}","categoryIds":["{}"],"quantity":{},"unitPrice":{}}}"#,
                p.id,
                p.category,
                1 + i % 3,
                p.unit_price
            )
        })
        .collect();
    let cart = format!(
        r#"{{"code":"{code}","userId":"user_0000001","items":[{}],"shipping":{{"amount":4.99}}}}"#,
        items.join(",")
    );
    c.bench_function("http_json/cart_20_lines_parse", |b| {
        b.iter(|| black_box(ValidateBody::parse(black_box(cart.as_bytes()), limits).unwrap()))
    });
    let input = ValidateBody::parse(cart.as_bytes(), limits).unwrap();
    let request = ValidateRequest {
        code: input.codes.one().expect("one code"),
        user_id: &input.user_id,
        order_value: input.order_value,
        order_id: None,
        cart: input.cart.as_ref(),
    };
    c.bench_function("http_json/cart_20_lines_validate", |b| b.iter(|| black_box(engine.validate(&request, &caller))));
    let validation = engine.validate(&request, &caller);
    c.bench_function("http_json/cart_20_lines_answer", |b| {
        b.iter(|| {
            let discount = match validation.decision {
                coupon_engine::domain::rules::Decision::Valid { discount, .. } => discount.get(),
                coupon_engine::domain::rules::Decision::Rejected(_) => 0,
            };
            let answer = coupon_engine::http::cart_answer::CartAnswer::new(
                input.cart.as_ref().unwrap(),
                &validation.code,
                None,
                input.order_value.get(),
                discount,
                validation.taken.as_ref(),
            );
            black_box(serde_json::to_vec(&answer).unwrap())
        })
    });
}

criterion_group!(benches, http_json);
criterion_main!(benches);
