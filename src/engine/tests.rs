//! The engine's use cases without HTTP or PostgreSQL: a real journal in a temporary
//! directory, a clock the test moves. Every case runs in both modes: deciding alone (the
//! journal records every use) and sharing with other instances (uses under a limit are
//! claimed in the simulation's model of PostgreSQL, `crate::sim::SharedModel`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeZone;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::campaign::Campaign;
use crate::domain::coupon::{Coupon, CouponKind, Discount, Status};
use crate::domain::event::Event;
use crate::domain::identity::redemption_id;
use crate::engine::clock::ManualClock;
use crate::engine::ports::Ports;
use crate::journal::JournalReader;
use crate::sim::SharedModel;

/// The two ways an instance decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deciding {
    Alone,
    Sharing,
}

const BOTH: [Deciding; 2] = [Deciding::Alone, Deciding::Sharing];

struct Fixture {
    engine: Arc<Engine>,
    clock: Arc<ManualClock>,
    reader: Arc<Mutex<JournalReader>>,
    _dir: tempfile::TempDir,
    /// PostgreSQL's side while sharing, and the shipper that feeds it the journal.
    shared: Option<Arc<SharedModel>>,
    shipper: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(shipper) = &self.shipper {
            shipper.abort();
        }
    }
}

impl Fixture {
    async fn new(deciding: Deciding, coupons: Vec<Coupon>, campaigns: Vec<Campaign>) -> Fixture {
        let dir = tempfile::Builder::new().prefix("engine-test-").tempdir().unwrap();
        let metrics = Arc::new(Metrics::new(&[]));
        let (journal, reader) = Journal::open(dir.path(), 0, metrics.journal.clone()).unwrap();
        let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()));
        let settings = crate::config::Settings::defaults().engine();
        let shared =
            (deciding == Deciding::Sharing).then(|| Arc::new(SharedModel::new(&coupons, &campaigns, clock.clone())));
        let ports = shared.as_deref().map_or_else(Ports::none, SharedModel::ports);
        let engine = Arc::new(Engine::new(journal, ports, clock.clone(), metrics, settings));
        if let Some(shared) = &shared {
            shared.join(&engine);
        }
        engine.catalog().publisher().await.replace_all(coupons, campaigns, Vec::new());
        engine.catalog().set_ready();
        let reader = Arc::new(Mutex::new(reader));
        let shipper = shared.clone().map(|shared| {
            let reader = reader.clone();
            tokio::spawn(async move {
                loop {
                    shared.ship(&mut reader.lock().unwrap());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        });
        Fixture { engine, clock, reader, _dir: dir, shared, shipper }
    }

    /// Every use taken and recorded, where it is recorded (the journal, or PostgreSQL for a
    /// claimed one): (coupon, order, discount).
    fn recorded_uses(&self) -> Vec<(CouponId, String, Cents)> {
        if let Some(shared) = &self.shared {
            shared.ship(&mut self.reader.lock().unwrap());
            return shared
                .rows()
                .into_iter()
                .map(|(coupon, order, discount, _, _)| (coupon, order, discount))
                .collect();
        }
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Redeemed(r) => Some((r.coupon_id, r.order_id, r.discount)),
                _ => None,
            })
            .collect()
    }

    /// Every event in the journal, in order.
    fn events(&self) -> Vec<Event> {
        let reader = self.reader.lock().unwrap();
        let (entries, _) = reader.read(reader.checkpoint(), 64 << 20).unwrap();
        entries.iter().map(|e| Event::decode(&e.payload).unwrap()).collect()
    }

    async fn redeem(&self, code: &str, user: &str, order: &str, value: u64) -> UseOutcome {
        let req = UseRequest {
            code,
            user_id: user,
            order_id: order,
            order_value: cents(value),
            cart: None,
            anonymous_from: None,
        };
        self.engine.redeem(&req).await.unwrap()
    }

    async fn hold(&self, code: &str, user: &str, order: &str, ttl: u64) -> UseOutcome {
        let req = UseRequest {
            code,
            user_id: user,
            order_id: order,
            order_value: cents(10_000),
            cart: None,
            anonymous_from: None,
        };
        self.engine.hold(&req, Duration::from_secs(ttl)).await.unwrap()
    }

    async fn release(&self, code: &str, order: &str, user: Option<&str>) -> ReleaseOutcome {
        self.engine.release(&ReleaseRequest { code, order_id: order, user_id: user }).await.unwrap()
    }

    fn validate(&self, code: &str, user: &str, order: Option<&str>) -> Decision {
        let req = ValidateRequest { code, user_id: user, order_value: cents(10_000), order_id: order, cart: None };
        let caller = Caller { ip: None, user_agent: None, started: Instant::now() };
        self.engine.validate(&req, &caller).decision
    }
}

fn cents(n: u64) -> Cents {
    Cents::new(n).unwrap()
}

fn coupon(id: CouponId, code: &str, edit: impl FnOnce(&mut Coupon)) -> Coupon {
    let mut coupon = Coupon::new(id, code, CouponKind::TimeSpecific, Discount::Fixed(cents(1_000)));
    edit(&mut coupon);
    coupon
}

fn campaign(id: CampaignId, edit: impl FnOnce(&mut Campaign)) -> Campaign {
    let mut campaign = Campaign::new(id, &format!("campaign-{id}"));
    edit(&mut campaign);
    campaign
}

fn receipt(outcome: &UseOutcome) -> &Receipt {
    match outcome {
        UseOutcome::Taken(r) | UseOutcome::Replayed(r) | UseOutcome::Confirmed(r) => r,
        UseOutcome::Refused(refused) => panic!("refused: {refused:?}"),
    }
}

#[tokio::test]
async fn a_redemption_replays_and_refuses_others_and_other_amounts() {
    for deciding in BOTH {
        let f = Fixture::new(deciding, vec![coupon(1, "TEN", |_| {})], vec![]).await;
        let first = f.redeem("ten", "u1", "o-1", 10_000).await;
        assert!(matches!(first, UseOutcome::Taken(_)), "{first:?}");
        let id = receipt(&first).id;
        assert_eq!(id, redemption_id(1, "o-1"), "ids are deterministic");
        assert_eq!((receipt(&first).discount, receipt(&first).final_amount), (cents(1_000), cents(9_000)));
        let again = f.redeem("TEN", "u1", "o-1", 10_000).await;
        assert!(matches!(&again, UseOutcome::Replayed(r) if r.id == id), "{again:?}");
        assert_eq!(f.redeem("TEN", "u2", "o-1", 10_000).await, UseOutcome::Refused(Refused::OrderTaken));
        assert_eq!(f.redeem("TEN", "u1", "o-1", 20_000).await, UseOutcome::Refused(Refused::IdempotencyMismatch));
        assert_eq!(f.validate("TEN", "u9", Some("o-1")), Decision::Rejected(Reason::OrderAlreadyRedeemed));
        assert_eq!(f.redeem("NOPE", "u1", "o-2", 1).await, UseOutcome::Refused(Refused::Rule(Reason::CouponNotFound)));
        assert_eq!(f.recorded_uses().len(), 1, "one record for one redemption ({deciding:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_buyers_for_fifty_uses() {
    for deciding in BOTH {
        let f = Fixture::new(deciding, vec![coupon(1, "FIFTY", |c| c.usage_limit = Some(50))], vec![]).await;
        let tasks: Vec<_> = (0..300)
            .map(|n| {
                let engine = f.engine.clone();
                tokio::spawn(async move {
                    let (user, order) = (format!("buyer-{n}"), format!("order-{n}"));
                    let req = UseRequest {
                        code: "FIFTY",
                        user_id: &user,
                        order_id: &order,
                        order_value: cents(5_000),
                        cart: None,
                        anonymous_from: None,
                    };
                    engine.redeem(&req).await.unwrap()
                })
            })
            .collect();
        let mut taken = 0;
        for task in tasks {
            match task.await.unwrap() {
                UseOutcome::Taken(_) => taken += 1,
                outcome => assert_eq!(outcome, UseOutcome::Refused(Refused::Rule(Reason::UsageLimitReached))),
            }
        }
        assert_eq!(taken, 50);
        assert_eq!(f.engine.ledger().count(Tally::Coupon(1)).live, 50);
        assert_eq!(f.recorded_uses().len(), 50, "only taken uses are recorded ({deciding:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_order_twenty_times_at_once_is_one_redemption() {
    for deciding in BOTH {
        let f = Fixture::new(deciding, vec![coupon(1, "ONCE", |c| c.usage_limit = Some(5))], vec![]).await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let engine = f.engine.clone();
                tokio::spawn(async move {
                    let req = UseRequest {
                        code: "ONCE",
                        user_id: "u",
                        order_id: "o",
                        order_value: cents(5_000),
                        cart: None,
                        anonymous_from: None,
                    };
                    engine.redeem(&req).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        assert_eq!(outcomes.iter().filter(|o| matches!(o, UseOutcome::Taken(_))).count(), 1);
        assert_eq!(outcomes.iter().filter(|o| matches!(o, UseOutcome::Replayed(_))).count(), 19);
        assert_eq!(outcomes.iter().map(|o| receipt(o).id).collect::<HashSet<_>>().len(), 1);
        assert_eq!(f.engine.ledger().count(Tally::Coupon(1)).live, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_in_forty_tabs_against_a_per_user_limit() {
    for deciding in BOTH {
        let f = Fixture::new(deciding, vec![coupon(1, "TWICE", |c| c.per_user_limit = Some(2))], vec![]).await;
        let tasks: Vec<_> = (0..40)
            .map(|n| {
                let engine = f.engine.clone();
                tokio::spawn(async move {
                    let order = format!("tab-{n}");
                    let req = UseRequest {
                        code: "TWICE",
                        user_id: "same",
                        order_id: &order,
                        order_value: cents(5_000),
                        cart: None,
                        anonymous_from: None,
                    };
                    engine.redeem(&req).await.unwrap()
                })
            })
            .collect();
        let mut taken = 0;
        for task in tasks {
            if matches!(task.await.unwrap(), UseOutcome::Taken(_)) {
                taken += 1;
            }
        }
        assert_eq!(taken, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_per_user_limit_set_later_counts_the_uses_before_it() {
    for deciding in BOTH {
        let f = Fixture::new(
            deciding,
            vec![coupon(1, "OPEN", |c| c.campaign_id = Some(7)), coupon(2, "OTHER", |c| c.campaign_id = Some(7))],
            vec![campaign(7, |_| {})],
        )
        .await;
        assert!(matches!(f.redeem("OPEN", "u1", "o-1", 5_000).await, UseOutcome::Taken(_)));
        assert!(matches!(f.redeem("OTHER", "u1", "o-2", 5_000).await, UseOutcome::Taken(_)));
        // Without a per-user limit, nobody's uses are counted per user.
        assert_eq!(f.engine.ledger().count(Tally::UserCoupon(1, f.engine.ledger().id_key("u1"))).live, 0);

        // Redemptions race the publish of limits: each use is counted once, whichever side of
        // the publish it falls on.
        let racers: Vec<_> = (0..16)
            .map(|n| {
                let engine = f.engine.clone();
                tokio::spawn(async move {
                    let order = format!("race-{n}");
                    let req = UseRequest {
                        code: "OPEN",
                        user_id: "racer",
                        order_id: &order,
                        order_value: cents(5_000),
                        cart: None,
                        anonymous_from: None,
                    };
                    engine.redeem(&req).await.unwrap()
                })
            })
            .collect();
        let limited = coupon(1, "OPEN", |c| {
            c.campaign_id = Some(7);
            c.per_user_limit = Some(1);
            c.version = 2;
        });
        let capped = campaign(7, |k| {
            k.per_user_limit = Some(2);
            k.version = 2;
        });
        {
            let publisher = f.engine.catalog().publisher().await;
            publisher.apply_campaigns(&[7], vec![capped]);
            publisher.apply_coupons(catalog::CouponChanges { upserts: vec![limited], deleted: vec![] });
            assert!(publisher.added_user_limits());
            f.engine.count_new_user_limits();
        }
        let mut racer_uses = 0;
        for racer in racers {
            racer_uses += u32::from(matches!(racer.await.unwrap(), UseOutcome::Taken(_)));
        }
        let ledger = f.engine.ledger();
        let racer = ledger.id_key("racer");
        assert_eq!(ledger.count(Tally::UserCoupon(1, racer)).live, racer_uses, "every racing use counted once");
        assert_eq!(ledger.count(Tally::UserCampaign(7, racer)).live, racer_uses);
        assert_eq!(
            f.redeem("OPEN", "u1", "o-3", 5_000).await,
            UseOutcome::Refused(Refused::Rule(Reason::UserUsageLimitReached)),
            "the use before the limit counts against it"
        );
        assert_eq!(
            f.redeem("OTHER", "u1", "o-4", 5_000).await,
            UseOutcome::Refused(Refused::Rule(Reason::CampaignUserLimitReached)),
            "both uses before the campaign's limit count against it"
        );
        // Released, a use gives back the counts the back-fill gave it.
        assert!(matches!(f.release("OPEN", "o-1", None).await, ReleaseOutcome::Released { .. }));
        assert_eq!(ledger.count(Tally::UserCoupon(1, ledger.id_key("u1"))).live, 0);
        assert_eq!(ledger.count(Tally::UserCampaign(7, ledger.id_key("u1"))).live, 1);
    }
}

/// A claim that failed without an answer keeps its lease unit until PostgreSQL says whether it
/// committed: meanwhile the limit is not reached for anyone else on this instance (503, never a
/// false 422), and once the claim is known not to have committed the unit sells.
#[tokio::test]
async fn a_unit_held_by_a_claim_in_doubt_is_unavailable_not_sold_out() {
    let f = Fixture::new(Deciding::Sharing, vec![coupon(1, "LAST", |c| c.usage_limit = Some(1))], vec![]).await;
    let shared = f.shared.clone().expect("sharing");
    // The lease's unit is granted; the claim then fails before it reaches PostgreSQL.
    shared.fail_claims(true);
    assert_eq!(f.redeem("LAST", "u1", "o-1", 5_000).await, UseOutcome::Refused(Refused::QuotaUnavailable));
    shared.fail_claims(false);
    let meanwhile = f.redeem("LAST", "u2", "o-2", 5_000).await;
    assert_eq!(meanwhile, UseOutcome::Refused(Refused::QuotaUnavailable), "the unit may come back");
    assert_eq!(f.engine.settle_doubts().await, 0, "every doubt settled");
    assert!(matches!(f.redeem("LAST", "u2", "o-2", 5_000).await, UseOutcome::Taken(_)), "it came back");
    assert_eq!(
        f.redeem("LAST", "u3", "o-3", 5_000).await,
        UseOutcome::Refused(Refused::Rule(Reason::UsageLimitReached)),
        "now it is sold out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_race_redeems_and_give_back_exactly_once() {
    for deciding in BOTH {
        let f = Fixture::new(deciding, vec![coupon(1, "SOLO", |c| c.usage_limit = Some(1))], vec![]).await;
        assert!(matches!(f.redeem("SOLO", "u1", "o-1", 5_000).await, UseOutcome::Taken(_)));
        assert_eq!(f.release("SOLO", "o-1", Some("u2")).await, ReleaseOutcome::NotFound, "someone else's order");
        assert_eq!(f.release("SOLO", "o-9", None).await, ReleaseOutcome::NotFound);
        // Twenty releases of the order and twenty buyers for the freed use, all at once.
        let releases: Vec<_> = (0..20)
            .map(|_| {
                let engine = f.engine.clone();
                tokio::spawn(async move {
                    engine
                        .release(&ReleaseRequest { code: "SOLO", order_id: "o-1", user_id: Some("u1") })
                        .await
                        .unwrap()
                })
            })
            .collect();
        let buyers: Vec<_> = (0..20)
            .map(|n| {
                let engine = f.engine.clone();
                tokio::spawn(async move {
                    let order = format!("later-{n}");
                    let req = UseRequest {
                        code: "SOLO",
                        user_id: "buyer",
                        order_id: &order,
                        order_value: cents(5_000),
                        cart: None,
                        anonymous_from: None,
                    };
                    engine.redeem(&req).await.unwrap()
                })
            })
            .collect();
        let mut released = 0;
        for task in releases {
            match task.await.unwrap() {
                ReleaseOutcome::Released { hold: None } => released += 1,
                outcome => assert_eq!(outcome, ReleaseOutcome::AlreadyReleased),
            }
        }
        assert_eq!(released, 1);
        let mut taken = 0;
        for task in buyers {
            if matches!(task.await.unwrap(), UseOutcome::Taken(_)) {
                taken += 1;
            }
        }
        assert!(taken <= 1, "one use came back, at most one buyer got it");
        assert_eq!(f.engine.ledger().count(Tally::Coupon(1)).live, taken);
        if taken == 0 {
            let late = f.redeem("SOLO", "late", "late-1", 5_000).await;
            assert!(matches!(late, UseOutcome::Taken(_)), "{deciding:?}: {late:?}");
        }
        // A released order id stays spent.
        assert_eq!(f.redeem("SOLO", "u1", "o-1", 5_000).await, UseOutcome::Refused(Refused::OrderTaken));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_budget_and_cap_hold_under_concurrency_across_codes() {
    for deciding in BOTH {
        // Three coupons share a campaign of 10 uses and 55.00; each use discounts 10.00 (and one
        // coupon 0, which takes neither).
        let coupons = vec![
            coupon(1, "A", |c| c.campaign_id = Some(7)),
            coupon(2, "B", |c| c.campaign_id = Some(7)),
            coupon(3, "FREE", |c| {
                c.campaign_id = Some(7);
                c.discount = Discount::Fixed(Cents::ZERO);
            }),
        ];
        let campaigns = vec![campaign(7, |k| {
            k.usage_limit = Some(10);
            k.budget = Some(cents(5_500));
            k.per_user_limit = Some(2);
        })];
        let f = Fixture::new(deciding, coupons, campaigns).await;
        let tasks: Vec<_> = (0..120)
            .map(|n| {
                let engine = f.engine.clone();
                tokio::spawn(async move {
                    let code = ["A", "B", "FREE"][n % 3];
                    let (user, order) = (format!("u{}", n % 40), format!("o{n}"));
                    let req = UseRequest {
                        code,
                        user_id: &user,
                        order_id: &order,
                        order_value: cents(5_000),
                        cart: None,
                        anonymous_from: None,
                    };
                    (code, engine.redeem(&req).await.unwrap())
                })
            })
            .collect();
        let mut paid = 0;
        let mut free = 0;
        for task in tasks {
            match task.await.unwrap() {
                ("FREE", outcome) => {
                    assert!(
                        matches!(outcome, UseOutcome::Taken(_)),
                        "a zero discount takes no campaign use: {outcome:?}"
                    );
                    free += 1;
                }
                (_, UseOutcome::Taken(_)) => paid += 1,
                (_, UseOutcome::Refused(Refused::Rule(reason))) => assert!(
                    matches!(reason, Reason::CampaignBudgetExhausted | Reason::CampaignUserLimitReached),
                    "{reason:?}"
                ),
                (_, outcome) => panic!("{outcome:?}"),
            }
        }
        assert_eq!(paid, 5, "55.00 of budget is five whole discounts of 10.00, never a sixth cut short");
        assert_eq!(free, 40);
        assert_eq!(f.engine.ledger().count(Tally::Campaign(7)), ledger::Count { live: 5, spent: 5_000 });
        // A release gives back exactly the discount it took.
        let (holder_coupon, holder_order, _) =
            f.recorded_uses().into_iter().find(|(_, _, discount)| *discount == cents(1_000)).unwrap();
        let code = if holder_coupon == 1 { "A" } else { "B" };
        assert!(matches!(f.release(code, &holder_order, None).await, ReleaseOutcome::Released { .. }));
        assert_eq!(f.engine.ledger().count(Tally::Campaign(7)), ledger::Count { live: 4, spent: 4_000 });
    }
}

#[tokio::test]
async fn a_hold_is_confirmed_cancelled_or_expired_and_the_answer_says_which() {
    for deciding in BOTH {
        let f = Fixture::new(deciding, vec![coupon(1, "ONE", |c| c.usage_limit = Some(1))], vec![]).await;
        // Held: the use is taken; another buyer is refused; a replay answers the same hold.
        let held = f.hold("ONE", "u1", "o-1", 60).await;
        assert!(matches!(&held, UseOutcome::Taken(r) if r.expires_at.is_some()), "{held:?}");
        assert_eq!(
            f.redeem("ONE", "u2", "o-2", 10_000).await,
            UseOutcome::Refused(Refused::Rule(Reason::UsageLimitReached))
        );
        assert!(matches!(f.hold("ONE", "u1", "o-1", 60).await, UseOutcome::Replayed(_)));
        assert_eq!(f.hold("ONE", "u2", "o-1", 60).await, UseOutcome::Refused(Refused::OrderTaken));
        assert_eq!(f.engine.live_holds(), 1);
        // Confirmed by the redemption, even once the coupon is deactivated: the hold guaranteed it.
        let inactive = coupon(1, "ONE", |c| {
            c.usage_limit = Some(1);
            c.status = Status::Inactive;
            c.version = 2;
        });
        f.engine
            .catalog()
            .publisher()
            .await
            .apply_coupons(catalog::CouponChanges { upserts: vec![inactive], deleted: vec![] });
        let confirmed = f.redeem("ONE", "u1", "o-1", 10_000).await;
        assert!(matches!(&confirmed, UseOutcome::Confirmed(r) if r.hold == Some(HoldFate::Confirmed)), "{confirmed:?}");
        assert_eq!(receipt(&confirmed).id, receipt(&held).id);
        assert_eq!((f.engine.live_holds(), f.engine.ledger().count(Tally::Coupon(1)).live), (0, 1));
        assert!(matches!(f.redeem("ONE", "u1", "o-1", 10_000).await, UseOutcome::Replayed(_)));
        assert_eq!(f.hold("ONE", "u1", "o-1", 60).await, UseOutcome::Refused(Refused::OrderTaken), "already redeemed");

        let f = Fixture::new(deciding, vec![coupon(1, "ONE", |c| c.usage_limit = Some(1))], vec![]).await;
        f.hold("ONE", "u1", "o-1", 60).await;
        // Cancelled: the use comes back, and the order may hold or redeem again.
        assert_eq!(f.release("ONE", "o-1", None).await, ReleaseOutcome::Released { hold: Some(HoldFate::Cancelled) });
        assert_eq!(f.release("ONE", "o-1", None).await, ReleaseOutcome::AlreadyReleased);
        assert_eq!(f.engine.ledger().count(Tally::Coupon(1)).live, 0);
        assert!(matches!(f.hold("ONE", "u1", "o-1", 60).await, UseOutcome::Taken(_)));

        // Expired: at the deadline the use comes back by itself...
        f.clock.advance(Duration::from_secs(59));
        assert_eq!(f.engine.expire_due().await, 0);
        f.clock.advance(Duration::from_secs(1));
        assert_eq!(f.engine.expire_due().await, 1);
        assert_eq!((f.engine.live_holds(), f.engine.ledger().count(Tally::Coupon(1)).live), (0, 0));
        // ...and a redeem applies the rules afresh, saying the hold had expired.
        let fresh = f.redeem("ONE", "u1", "o-1", 10_000).await;
        assert!(matches!(&fresh, UseOutcome::Taken(r) if r.hold == Some(HoldFate::Expired)), "{fresh:?}");
        if let Some(shared) = &f.shared {
            // Every change of the order went through its row: five, each a revision higher.
            shared.ship(&mut f.reader.lock().unwrap());
            let row = shared.rows().into_iter().find(|(coupon, order, ..)| *coupon == 1 && order == "o-1").unwrap();
            assert_eq!((row.3, row.4), (5, true), "the row took every change of the order");
        } else {
            let revs: Vec<(String, u32)> = f
                .events()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Redeemed(r) => Some(("redeemed".to_owned(), r.rev)),
                    Event::Released(r) => Some((format!("released {:?}", r.cause), r.rev)),
                    Event::Confirmed(r) => Some(("confirmed".to_owned(), r.rev)),
                    Event::Validated(_) | Event::Together { .. } => None,
                })
                .collect();
            let expected =
                [("redeemed", 1), ("released Cancelled", 2), ("redeemed", 3), ("released Expired", 4), ("redeemed", 5)];
            assert_eq!(
                revs,
                expected.map(|(e, r)| (e.to_owned(), r)).to_vec(),
                "every event of one order has a higher revision"
            );
        }
    }
}

#[tokio::test]
async fn at_the_deadline_the_first_to_act_wins() {
    for deciding in BOTH {
        let f = Fixture::new(deciding, vec![coupon(1, "ONE", |_| {})], vec![]).await;
        f.hold("ONE", "u1", "o-1", 10).await;
        f.clock.advance(Duration::from_secs(10));
        // The deadline has passed but the expiry has not run: the redeem expires the hold itself
        // and takes a fresh use, and says so.
        let redeemed = f.redeem("ONE", "u1", "o-1", 10_000).await;
        assert!(matches!(&redeemed, UseOutcome::Taken(r) if r.hold == Some(HoldFate::Expired)), "{redeemed:?}");
        assert_eq!(f.engine.expire_due().await, 0, "nothing left to expire");
        assert_eq!(f.engine.ledger().count(Tally::Coupon(1)).live, 1);
        // A cancel that arrives after the deadline says the hold had expired.
        f.hold("ONE", "u1", "o-2", 10).await;
        f.clock.advance(Duration::from_secs(11));
        assert_eq!(f.release("ONE", "o-2", None).await, ReleaseOutcome::Released { hold: Some(HoldFate::Expired) });
        assert_eq!(f.engine.ledger().count(Tally::Coupon(1)).live, 1);
    }
}

#[tokio::test]
async fn holds_are_capped_per_user() {
    for deciding in BOTH {
        let coupons = (1..=5).map(|n| coupon(n, &format!("C{n}"), |_| {})).collect();
        let f = Fixture::new(deciding, coupons, vec![]).await;
        for n in 1..=3 {
            assert!(matches!(f.hold(&format!("C{n}"), "hoarder", &format!("o{n}"), 60).await, UseOutcome::Taken(_)));
        }
        assert_eq!(f.hold("C4", "hoarder", "o4", 60).await, UseOutcome::Refused(Refused::TooManyHolds));
        assert!(matches!(f.hold("C4", "someone", "o4", 60).await, UseOutcome::Taken(_)));
        assert!(
            matches!(f.redeem("C5", "hoarder", "o5", 10_000).await, UseOutcome::Taken(_)),
            "redemptions are not capped"
        );
        f.release("C1", "o1", None).await;
        assert!(
            matches!(f.hold("C4", "hoarder", "o6", 60).await, UseOutcome::Taken(_)),
            "a released hold frees a place"
        );
    }
}

/// Lets the deadline task run until `live` holds remain, in real time (at most 10 s) and
/// without moving the paused clock: the loop yields (a yield never auto-advances a paused
/// clock), so while an expiry waits for the journal's thread, virtual time stands still and
/// only `tokio::time::advance` moves it.
async fn settle(engine: &Engine, live: i64) {
    let started = std::time::Instant::now();
    // A few rounds even when already there, so that a due expiry gets the chance to run.
    let mut rounds = 0;
    while rounds < 20 || engine.live_holds() != live {
        assert!(started.elapsed() < Duration::from_secs(10), "{} live holds, expected {live}", engine.live_holds());
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
        rounds += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_task_expires_holds_on_a_paused_clock() {
    let dir = tempfile::Builder::new().prefix("engine-test-").tempdir().unwrap();
    let metrics = Arc::new(Metrics::new(&[]));
    let (journal, _reader) = Journal::open(dir.path(), 0, metrics.journal.clone()).unwrap();
    let clock = Arc::new(clock::TokioClock::starting_at(Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()));
    let settings = crate::config::Settings::defaults().engine();
    let engine = Arc::new(Engine::new(journal, Ports::none(), clock, metrics, settings));
    engine.catalog().publisher().await.replace_all(vec![coupon(1, "ONE", |_| {})], vec![], Vec::new());
    // The holds are taken before the task starts: while a request waits for the journal's
    // thread, a paused clock jumps to the next timer.
    let created = tokio::time::Instant::now();
    for (order, ttl) in [("late", 900), ("early", 30)] {
        let req = UseRequest {
            code: "ONE",
            user_id: "u",
            order_id: order,
            order_value: cents(1_000),
            cart: None,
            anonymous_from: None,
        };
        assert!(matches!(engine.hold(&req, Duration::from_secs(ttl)).await.unwrap(), UseOutcome::Taken(_)));
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.clone().run_deadlines(stop.clone()));
    let elapsed = || tokio::time::Instant::now() - created;
    settle(&engine, 2).await;
    tokio::time::advance(Duration::from_secs(29)).await;
    settle(&engine, 2).await;
    assert_eq!(engine.live_holds(), 2, "nothing expires before its deadline");
    tokio::time::advance(Duration::from_secs(2)).await;
    settle(&engine, 1).await;
    assert_eq!(elapsed(), Duration::from_secs(31), "the early hold expired at its deadline");
    tokio::time::advance(Duration::from_secs(868)).await;
    settle(&engine, 1).await;
    assert_eq!(engine.live_holds(), 1, "the late hold outlives the early one's deadline");
    tokio::time::advance(Duration::from_secs(2)).await;
    settle(&engine, 0).await;
    assert_eq!(elapsed(), Duration::from_secs(901), "the late hold expired at its own deadline");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn stored_uses_count_again_and_expired_holds_are_given_back_at_load() {
    for deciding in BOTH {
        let f = Fixture::new(deciding, vec![coupon(1, "TWO", |c| c.usage_limit = Some(2))], vec![]).await;
        let now = f.engine.now();
        let stored = |order: &str, hold_until, released_at| StoredUse {
            id: redemption_id(1, order),
            rev: 1,
            coupon_id: 1,
            code: None,
            user_id: "u".into(),
            order_id: order.into(),
            order_value: cents(5_000),
            discount: cents(1_000),
            hold_until,
            released_at,
            made_by: None,
            cart: crate::engine::ledger::CartMark::default(),
            group: None,
        };
        let rows = [
            stored("live", None, None),
            stored("held", Some(now + chrono::Duration::seconds(60)), None),
            stored("lapsed", Some(now - chrono::Duration::seconds(1)), None),
            stored("released", None, Some(now)),
        ];
        if let Some(shared) = &f.shared {
            shared.store(&rows);
        }
        let loaded = f.engine.load_uses([rows[0].clone()].into_iter().chain(rows));
        assert_eq!(loaded, 4, "a duplicate row counts once");
        assert_eq!(f.engine.ledger().count(Tally::Coupon(1)).live, 3);
        assert_eq!(f.engine.expire_due().await, 1, "the hold that lapsed while the service was down");
        assert_eq!(f.engine.ledger().count(Tally::Coupon(1)).live, 2);
        assert_eq!(f.redeem("TWO", "u", "released", 5_000).await, UseOutcome::Refused(Refused::OrderTaken));
        assert_eq!(
            f.redeem("TWO", "v", "new", 5_000).await,
            UseOutcome::Refused(Refused::Rule(Reason::UsageLimitReached))
        );
    }
}

/// A set of `codes` on `order` by `user` (mode `all`, by priority).
fn set_of<'a>(codes: &'a [Cow<'a, str>], user: &'a str, order: &'a str) -> SetRequest<'a> {
    SetRequest {
        codes,
        user_id: user,
        order_id: order,
        order_value: cents(10_000),
        cart: None,
        mode: crate::domain::stack::Mode::All,
        select: crate::domain::stack::Select::Priority,
        max_total: None,
        anonymous_from: None,
    }
}

fn combining(id: CouponId, code: &str, edit: impl FnOnce(&mut Coupon)) -> Coupon {
    coupon(id, code, |c| {
        c.combines_with = crate::domain::stack::Classes::ALL;
        edit(c);
    })
}

/// A held set expires at its deadline, on the engine's clock: every hold given back in one
/// journal record, the order free for another set; before it, the redeem of the same set
/// confirms it whole, in one record too.
#[tokio::test]
async fn a_held_set_expires_whole_at_its_deadline_or_is_confirmed_whole() {
    let coupons = vec![combining(1, "A", |c| c.usage_limit = Some(1)), combining(2, "B", |_| {})];
    let f = Fixture::new(Deciding::Alone, coupons, vec![]).await;
    let codes = [Cow::Borrowed("A"), Cow::Borrowed("B")];
    let held = f.engine.hold_set(&set_of(&codes, "u1", "o-1"), Duration::from_secs(60)).await.unwrap();
    assert!(matches!(&held, SetOutcome::Taken(r) if r.uses.len() == 2 && r.expires_at.is_some()), "{held:?}");
    assert_eq!(f.engine.live_holds(), 2);
    assert_eq!(f.validate("A", "u9", None), Decision::Rejected(Reason::UsageLimitReached), "A's one use is held");
    f.clock.advance(Duration::from_secs(59));
    assert_eq!(f.engine.expire_due().await, 0);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.engine.expire_due().await, 1, "both holds at their common deadline, together");
    assert_eq!(f.engine.live_holds(), 0);
    let last = f.events().pop().expect("a record");
    let Event::Together { events } = last else { panic!("the expiry is one record: {last:?}") };
    assert!(events.len() == 2 && events.iter().all(|e| matches!(e, Event::Released(_))), "{events:?}");
    assert!(matches!(f.validate("A", "u9", None), Decision::Valid { .. }), "A's use is back");
    // The order holds no set now: another set may take it.
    let other = [Cow::Borrowed("B")];
    let taken = f.engine.redeem_set(&set_of(&other, "u1", "o-1")).await.unwrap();
    assert!(matches!(taken, SetOutcome::Taken(_)), "{taken:?}");

    // Held again on another order, then confirmed before the deadline: one record of two.
    let held = f.engine.hold_set(&set_of(&codes, "u1", "o-2"), Duration::from_secs(60)).await.unwrap();
    assert!(matches!(held, SetOutcome::Taken(_)), "{held:?}");
    f.clock.advance(Duration::from_secs(30));
    let confirmed = f.engine.redeem_set(&set_of(&codes, "u1", "o-2")).await.unwrap();
    assert!(matches!(&confirmed, SetOutcome::Confirmed(r) if r.hold == Some(HoldFate::Confirmed)), "{confirmed:?}");
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.engine.expire_due().await, 0, "confirmed uses do not expire");
    let last = f.events().pop().expect("a record");
    let Event::Together { events } = last else { panic!("the confirmation is one record: {last:?}") };
    assert!(events.iter().all(|e| matches!(e, Event::Confirmed(_))) && events.len() == 2, "{events:?}");
}

/// A set taken whole is one journal record; a refusal in the middle of the chain leaves every
/// count as it was.
#[tokio::test]
async fn a_set_is_one_record_and_a_refusal_takes_nothing() {
    let coupons =
        vec![combining(1, "A", |c| c.usage_limit = Some(5)), combining(2, "B", |c| c.per_user_limit = Some(1))];
    let f = Fixture::new(Deciding::Alone, coupons, vec![]).await;
    let codes = [Cow::Borrowed("A"), Cow::Borrowed("B")];
    let taken = f.engine.redeem_set(&set_of(&codes, "u1", "o-1")).await.unwrap();
    assert!(matches!(&taken, SetOutcome::Taken(r) if r.uses.len() == 2), "{taken:?}");
    let records = f.events();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(matches!(&records[0], Event::Together { events } if events.len() == 2));
    // B's per-user limit refuses u1's second set: A's use is not taken either.
    let refused = f.engine.redeem_set(&set_of(&codes, "u1", "o-2")).await.unwrap();
    let SetOutcome::Rejected(fates) = refused else { panic!("{refused:?}") };
    assert_eq!(fates[1].reason, Some(Reason::UserUsageLimitReached));
    assert_eq!(f.engine.ledger().count(crate::engine::ledger::Tally::Coupon(1)).live, 1, "A took nothing more");
    assert_eq!(f.events().len(), 1, "nothing journalled");
}
