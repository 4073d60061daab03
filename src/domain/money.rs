//! Money: `rust_decimal::Decimal`, in one currency with a fixed number of decimal places.
//!
//! Amounts that come from callers are checked, never rounded: an amount with more decimal
//! places than the currency has is rejected. Amounts the domain computes (costs, shares)
//! are computed in whole minor units (cents) with integer arithmetic, so that parts
//! always add up to their whole to the cent.

use rust_decimal::Decimal;

use crate::domain::rejection::{Field, Rejection};

/// The shop's currency.
pub const CURRENCY: &str = "CNY";

/// Decimal places of [`CURRENCY`] (fen).
pub const MONEY_SCALE: u32 = 2;

/// The largest price or unit cost accepted: 100,000,000.00.
pub const UNIT_AMOUNT_MAX: Decimal = Decimal::from_parts(1_410_065_408, 2, 0, false, 2);

/// The largest payment or refund accepted: 1,000,000,000,000.00.
pub const PAYMENT_AMOUNT_MAX: Decimal = Decimal::from_parts(276_447_232, 23_283, 0, false, 2);

/// The largest amount, either way, that an event may record: 10,000,000,000,000,000,000,000.00,
/// far beyond any decided one (the most stock is worth 100,000,000,000,000,000,000.00) and
/// far enough inside `Decimal` that the sums a fold makes of an order's amounts (at most
/// [`LINES_MAX`](crate::domain::limits::LINES_MAX) lines, bounded parcels, returns and
/// refunds) cannot overflow it.
pub const RECORDED_AMOUNT_MAX: Decimal = Decimal::from_parts(2_990_538_752, 434_162_106, 542, false, 0);

/// Whether an event may record `amount`: at most [`MONEY_SCALE`] decimal places and at most
/// [`RECORDED_AMOUNT_MAX`] either way.
pub fn is_recordable(amount: Decimal) -> bool {
    amount.scale() <= MONEY_SCALE && amount.abs() <= RECORDED_AMOUNT_MAX
}

/// Whether zero is an acceptable amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// The amount must be greater than zero.
    Positive,
    /// The amount may be zero.
    NonNegative,
}

/// Checks an amount a caller sent and returns it with exactly [`MONEY_SCALE`] places.
pub fn check_amount(field: Field, amount: Decimal, sign: Sign, max: Decimal) -> Result<Decimal, Rejection> {
    if amount.scale() > MONEY_SCALE {
        return Err(Rejection::invalid(
            field,
            format!("has more than {MONEY_SCALE} decimal places; {CURRENCY} amounts are never rounded"),
        ));
    }
    match sign {
        Sign::Positive if amount <= Decimal::ZERO => {
            return Err(Rejection::invalid(field, "must be greater than zero"));
        }
        Sign::NonNegative if amount.is_sign_negative() && !amount.is_zero() => {
            return Err(Rejection::invalid(field, "must not be negative"));
        }
        _ => {}
    }
    if amount > max {
        return Err(Rejection::invalid(field, format!("must be at most {max}")));
    }
    Ok(normalize(amount))
}

/// The amount with exactly [`MONEY_SCALE`] decimal places. Precondition: no more places.
pub fn normalize(amount: Decimal) -> Decimal {
    assert!(amount.scale() <= MONEY_SCALE, "amount {amount} has more than {MONEY_SCALE} places");
    let mut amount = amount;
    amount.rescale(MONEY_SCALE);
    if amount.is_zero() {
        amount.set_sign_positive(true);
    }
    amount
}

/// The amount in minor units. Precondition: at most [`MONEY_SCALE`] decimal places.
pub fn to_cents(amount: Decimal) -> i128 {
    normalize(amount).mantissa()
}

/// An amount from minor units.
pub fn from_cents(cents: i128) -> Decimal {
    Decimal::from_i128_with_scale(cents, MONEY_SCALE)
}

/// `total * part / whole`, rounded half up to the cent, for `part <= whole`.
///
/// `share(total, whole, whole) == total` exactly, and `share` never decreases as `part`
/// grows, so `share(t, a + b, w) - share(t, a, w)` is a non-negative increment and the
/// increments of parts that make up the whole add up to the total exactly.
pub fn share(total: Decimal, part: u64, whole: u64) -> Decimal {
    assert!(whole > 0 && part <= whole, "share {part}/{whole}");
    assert!(!total.is_sign_negative() || total.is_zero());
    if part == whole {
        return normalize(total);
    }
    from_cents(scale_cents(to_cents(total), part, whole))
}

/// `cents * numerator / denominator`, rounded half up. Precondition: non-negative.
fn scale_cents(cents: i128, numerator: u64, denominator: u64) -> i128 {
    assert!(cents >= 0 && denominator > 0);
    let product = cents * i128::from(numerator);
    let denominator = i128::from(denominator);
    (product + denominator / 2) / denominator
}

/// `unit_total_value * quantity / unit_count` without the `part <= whole` bound: the value
/// of `quantity` units at the average cost of `unit_count` units worth `unit_total_value`.
pub fn value_at_average(unit_total_value: Decimal, quantity: u64, unit_count: u64) -> Decimal {
    assert!(unit_count > 0);
    from_cents(scale_cents(to_cents(unit_total_value), quantity, unit_count))
}

/// Spreads `amount` over parts in proportion to `weights`, by largest remainder.
///
/// Each part first gets the floor of its exact share in cents; the cents left over go one
/// each to the parts with the largest remainders (earlier parts first on ties). The parts
/// add up to `amount` exactly, and no part exceeds its weight.
/// Preconditions: weights non-negative, `0 <= amount <= sum(weights)`.
pub fn allocate(amount: Decimal, weights: &[Decimal]) -> Vec<Decimal> {
    let amount_cents = to_cents(amount);
    let weight_cents: Vec<i128> = weights.iter().map(|w| to_cents(*w)).collect();
    let weight_total: i128 = weight_cents.iter().sum();
    assert!(weight_cents.iter().all(|w| *w >= 0));
    assert!(amount_cents >= 0 && amount_cents <= weight_total, "allocate {amount} over {weight_total} cents");
    if amount_cents == 0 {
        return vec![from_cents(0); weights.len()];
    }
    let mut parts: Vec<i128> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (index, weight) in weight_cents.iter().enumerate() {
        let exact = amount_cents * weight;
        parts.push(exact / weight_total);
        remainders.push((exact % weight_total, index));
    }
    let leftover = amount_cents - parts.iter().sum::<i128>();
    assert!(leftover >= 0 && leftover < weights.len() as i128 + 1);
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, index) in remainders.iter().take(leftover as usize) {
        parts[*index] += 1;
    }
    assert_eq!(parts.iter().sum::<i128>(), amount_cents);
    parts.into_iter().map(from_cents).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::dec;

    #[test]
    fn amount_checks() {
        let check = |d: Decimal| check_amount(Field::Price, d, Sign::Positive, UNIT_AMOUNT_MAX);
        assert_eq!(check(dec!(19.9)).map(|d| d.to_string()), Ok("19.90".to_owned()));
        assert!(check(dec!(19.999)).is_err());
        assert!(check(dec!(19.900)).is_err(), "three places as written are rejected");
        assert!(check(dec!(0)).is_err());
        assert!(check(dec!(-1)).is_err());
        assert!(check(dec!(100000000.00)).is_ok());
        assert!(check(dec!(100000000.01)).is_err());
        assert_eq!(PAYMENT_AMOUNT_MAX, dec!(1000000000000.00));
        assert_eq!(UNIT_AMOUNT_MAX, dec!(100000000.00));
    }

    #[test]
    fn allocation_is_exact() {
        let parts = allocate(dec!(10.00), &[dec!(10.00), dec!(10.00), dec!(10.00)]);
        assert_eq!(parts, vec![dec!(3.34), dec!(3.33), dec!(3.33)]);
        let parts = allocate(dec!(0.05), &[dec!(3.00), dec!(0), dec!(7.00)]);
        assert_eq!(parts, vec![dec!(0.02), dec!(0), dec!(0.03)]);
        let parts = allocate(dec!(7.00), &[dec!(7.00)]);
        assert_eq!(parts, vec![dec!(7.00)]);
    }

    #[test]
    fn shares_add_up() {
        let total = dec!(0.10);
        let mut given = Decimal::ZERO;
        for part in 1..=3 {
            given += share(total, part, 3) - share(total, part - 1, 3);
        }
        assert_eq!(given, total);
        assert_eq!(share(dec!(10.00), 1, 3), dec!(3.33));
        assert_eq!(share(dec!(10.00), 2, 3), dec!(6.67));
    }
}
