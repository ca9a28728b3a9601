//! Splitting a total over weights to the minor unit (API.md §9, step 4): each share is the
//! floor of its exact part, and the minor units left go to the largest remainders, ties to
//! the larger weight, then to the lower index. Over a cart's lines, then over a line's units,
//! which are kept as runs of equal amounts so that a line of 10,000 units costs one entry.

/// `count` consecutive units of one line with the same amount, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub count: u32,
    pub amount: u64,
}

impl Run {
    pub fn new(count: u32, amount: u64) -> Run {
        Run { count, amount }
    }

    /// The run's amount times its count.
    pub fn total(self) -> u64 {
        u64::from(self.count) * self.amount
    }
}

/// Σ of a line's units.
pub fn sum(runs: &[Run]) -> u64 {
    runs.iter().map(|r| r.total()).sum()
}

/// Appends `run` to `runs`, merged with the last one if their amounts are equal; empty runs
/// are dropped.
pub fn push(runs: &mut Vec<Run>, run: Run) {
    if run.count == 0 {
        return;
    }
    match runs.last_mut() {
        Some(last) if last.amount == run.amount => last.count += run.count,
        _ => runs.push(run),
    }
}

/// `alloc(total, weights)`: shares that add up to `total`, none above its weight when
/// `total` ≤ Σ weights. All zero when the weights are.
pub fn alloc(total: u64, weights: &[u64]) -> Vec<u64> {
    let whole: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if whole == 0 {
        return vec![0; weights.len()];
    }
    let total128 = u128::from(total);
    let mut shares: Vec<u64> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u128, u64, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = total128 * u128::from(w);
        shares.push(u64::try_from(exact / whole).unwrap_or(u64::MAX));
        remainders.push((exact % whole, w, i));
    }
    let given: u64 = shares.iter().sum();
    let left = usize::try_from(total.saturating_sub(given)).unwrap_or(usize::MAX);
    // Largest remainder first, then the larger weight, then the lower index.
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    for &(_, _, i) in remainders.iter().take(left) {
        shares[i] += 1;
    }
    shares
}

/// `alloc` over a line's units, each weighing its amount in `weights`: the share of each unit,
/// as runs in unit order. Units of one run have equal weights and remainders, so the extra
/// minor units go to the first units of a run (the lower unit numbers).
pub fn alloc_units(total: u64, weights: &[Run]) -> Vec<Run> {
    let whole: u128 = weights.iter().map(|r| u128::from(r.total())).sum();
    let mut out = Vec::with_capacity(weights.len() + 1);
    if whole == 0 {
        for run in weights {
            push(&mut out, Run::new(run.count, 0));
        }
        return out;
    }
    let total128 = u128::from(total);
    let mut each: Vec<u64> = Vec::with_capacity(weights.len());
    let mut order: Vec<(u128, u64, usize)> = Vec::with_capacity(weights.len());
    let mut given: u64 = 0;
    for (i, run) in weights.iter().enumerate() {
        let exact = total128 * u128::from(run.amount);
        let share = u64::try_from(exact / whole).unwrap_or(u64::MAX);
        each.push(share);
        given += share * u64::from(run.count);
        order.push((exact % whole, run.amount, i));
    }
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut left = total.saturating_sub(given);
    let mut extra = vec![0u32; weights.len()];
    for &(_, _, i) in &order {
        if left == 0 {
            break;
        }
        let n = u64::from(weights[i].count).min(left);
        extra[i] = u32::try_from(n).unwrap_or(u32::MAX);
        left -= n;
    }
    for (i, run) in weights.iter().enumerate() {
        push(&mut out, Run::new(extra[i], each[i] + 1));
        push(&mut out, Run::new(run.count - extra[i], each[i]));
    }
    out
}

/// Two levels: `total` over the lines (each weighing the sum of its units' weights), then each
/// line's share over its units.
pub fn alloc_lines(total: u64, weights: &[Vec<Run>]) -> Vec<Vec<Run>> {
    let line_weights: Vec<u64> = weights.iter().map(|runs| sum(runs)).collect();
    let shares = alloc(total, &line_weights);
    weights.iter().zip(shares).map(|(runs, share)| alloc_units(share, runs)).collect()
}

/// `a − b`, unit by unit (both runs of the same units; `b` never above `a`).
pub fn minus(a: &[Run], b: &[Run]) -> Vec<Run> {
    zip(a, b, |x, y| x.saturating_sub(y))
}

/// `a + b`, unit by unit.
pub fn plus(a: &[Run], b: &[Run]) -> Vec<Run> {
    zip(a, b, |x, y| x + y)
}

/// Whether every unit of `a` is at most the same unit of `b` (for tests and fuzzing).
pub fn zip_le(a: &[Run], b: &[Run]) -> bool {
    zip(a, b, |x, y| u64::from(x <= y)).iter().all(|r| r.amount == 1)
}

/// Combines two run lists over the same units, unit by unit.
fn zip(a: &[Run], b: &[Run], f: impl Fn(u64, u64) -> u64) -> Vec<Run> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    let (mut left_a, mut left_b) = (a.first().map_or(0, |r| r.count), b.first().map_or(0, |r| r.count));
    while i < a.len() && j < b.len() {
        let n = left_a.min(left_b);
        push(&mut out, Run::new(n, f(a[i].amount, b[j].amount)));
        left_a -= n;
        left_b -= n;
        if left_a == 0 {
            i += 1;
            left_a = a.get(i).map_or(0, |r| r.count);
        }
        if left_b == 0 {
            j += 1;
            left_b = b.get(j).map_or(0, |r| r.count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_follows_the_remainder_rule() {
        // (total, weights, shares)
        let cases: &[(u64, &[u64], &[u64])] = &[
            (1000, &[1000, 1000, 1000], &[334, 333, 333]), // V2: ties to the lower index
            (300, &[999, 1, 1000], &[150, 0, 150]),        // V1: largest remainder
            (210, &[1000, 1000, 1001], &[70, 70, 70]),     // V4
            (1, &[1, 2], &[0, 1]),                         // equal remainders: larger weight
            (0, &[5, 5], &[0, 0]),
            (7, &[0, 0], &[0, 0]), // nothing to weigh
            (10, &[10], &[10]),
            (5, &[3, 0, 2], &[3, 0, 2]),
        ];
        for &(total, weights, expected) in cases {
            assert_eq!(alloc(total, weights), expected, "alloc({total}, {weights:?})");
        }
    }

    #[test]
    fn units_of_a_run_share_equally_and_the_first_take_the_extra() {
        let cases: &[(u64, &[Run], &[Run])] = &[
            (150, &[Run { count: 3, amount: 333 }], &[Run { count: 3, amount: 50 }]),
            (241, &[Run { count: 2, amount: 1999 }], &[Run { count: 1, amount: 121 }, Run { count: 1, amount: 120 }]),
            (0, &[Run { count: 4, amount: 450 }], &[Run { count: 4, amount: 0 }]),
            (
                4,
                &[Run { count: 1, amount: 0 }, Run { count: 2, amount: 2000 }],
                &[Run { count: 1, amount: 0 }, Run { count: 2, amount: 2 }],
            ),
            (
                5,
                &[Run { count: 2, amount: 3 }, Run { count: 1, amount: 4 }],
                &[Run { count: 1, amount: 2 }, Run { count: 1, amount: 1 }, Run { count: 1, amount: 2 }],
            ),
        ];
        for &(total, weights, expected) in cases {
            assert_eq!(alloc_units(total, weights), expected, "alloc_units({total}, {weights:?})");
        }
    }

    proptest::proptest! {
        /// Σ shares = total, and no share above its weight, whatever the weights.
        #[test]
        fn shares_add_up_and_stay_within_their_weights(
            weights in proptest::collection::vec(0u64..1_000_000, 1..20),
            fraction in 0u64..=1000,
        ) {
            let whole: u64 = weights.iter().sum();
            let total = whole * fraction / 1000;
            let shares = alloc(total, &weights);
            proptest::prop_assert_eq!(shares.iter().sum::<u64>(), total);
            proptest::prop_assert!(shares.iter().zip(&weights).all(|(s, w)| s <= w));
            let runs: Vec<Run> = weights.iter().map(|&w| Run::new(3, w)).collect();
            let units = alloc_units(total, &runs);
            proptest::prop_assert_eq!(sum(&units), total);
            proptest::prop_assert!(zip_le(&units, &runs));
        }
    }

    #[test]
    fn runs_combine_unit_by_unit() {
        let a = [Run::new(3, 2000)];
        let b = [Run::new(1, 2000), Run::new(2, 0)];
        assert_eq!(minus(&a, &b), [Run::new(1, 0), Run::new(2, 2000)]);
        assert_eq!(plus(&minus(&a, &b), &b), [Run::new(3, 2000)]);
    }
}
