//! Stock: receiving it from suppliers and counting the shelf.
//!
//! A receipt adds 1 to [`RECEIPT_QUANTITY_MAX`] units of a known product, listed or not,
//! at a unit cost of zero or more, and never takes on hand past [`ON_HAND_MAX`]; its value
//! (units times unit cost) joins the stock's value, which is kept at moving average cost.
//!
//! A stocktake records how many units are on the shelf, at most [`COUNTED_QUANTITY_MAX`]
//! and [`ON_HAND_MAX`], and the difference from the books becomes an adjustment, in units
//! and in value: units missing take their share of the stock's value with them, units found
//! are valued at the average cost of those on hand or, when nothing is on hand, at the
//! latest receipt's unit cost. A count below what holds and open orders reserve records the
//! shortfall, which stops new holds and orders of the SKU (beyond the units a consumed hold
//! hands over) until on hand covers what is reserved again. A stocktake is never refused
//! for what it found: the shelf is the truth.

use rust_decimal::Decimal;

use crate::domain::command::AdjustmentReason;
use crate::domain::decide::{check_at_most, check_quantity, known_product};
use crate::domain::event::Event;
use crate::domain::ids::{Sku, check_text};
use crate::domain::limits::{COUNTED_QUANTITY_MAX, LABEL_LENGTH_MAX, ON_HAND_MAX, RECEIPT_QUANTITY_MAX};
use crate::domain::money::{self, Sign, UNIT_AMOUNT_MAX};
use crate::domain::orders::Orders;
use crate::domain::rejection::{Field, Rejection};
use crate::domain::state::{State, add, resolve_shortfall};

/// Decides `Command::ReceiveStock`.
pub(crate) fn decide_receive<O: Orders>(
    state: &State<O>,
    sku: &Sku,
    quantity: u64,
    unit_cost: Decimal,
    supplier_ref: &str,
) -> Result<Vec<Event>, Rejection> {
    sku.check()?;
    check_quantity(Field::Quantity, quantity, RECEIPT_QUANTITY_MAX)?;
    let unit_cost = money::check_amount(Field::UnitCost, unit_cost, Sign::NonNegative, UNIT_AMOUNT_MAX)?;
    check_text(Field::SupplierRef, supplier_ref, LABEL_LENGTH_MAX)?;
    let stock = &known_product(state, sku)?.stock;
    match stock.on_hand.checked_add(quantity) {
        Some(on_hand) if on_hand <= ON_HAND_MAX => {}
        _ => return Err(Rejection::StockLimitExceeded { sku: sku.clone(), max: ON_HAND_MAX }),
    }
    let value = money::normalize(unit_cost * Decimal::from(quantity));
    Ok(vec![Event::StockReceived {
        sku: sku.clone(),
        quantity,
        unit_cost,
        value,
        supplier_ref: supplier_ref.to_owned(),
    }])
}

/// Decides `Command::Stocktake`.
pub(crate) fn decide_stocktake<O: Orders>(
    state: &State<O>,
    sku: &Sku,
    counted: u64,
    reason: AdjustmentReason,
) -> Result<Vec<Event>, Rejection> {
    sku.check()?;
    check_at_most(Field::Counted, counted, COUNTED_QUANTITY_MAX.min(ON_HAND_MAX))?;
    let stock = &known_product(state, sku)?.stock;
    let value_delta = if counted < stock.on_hand {
        -money::share(stock.value, stock.on_hand - counted, stock.on_hand)
    } else if counted > stock.on_hand && stock.on_hand > 0 {
        money::value_at_average(stock.value, counted - stock.on_hand, stock.on_hand)
    } else {
        money::normalize(stock.last_unit_cost * Decimal::from(counted - stock.on_hand))
    };
    // Both counts are at most ON_HAND_MAX, far inside i64.
    let delta = i64::try_from(i128::from(counted) - i128::from(stock.on_hand))
        .map_err(|_| Rejection::invalid(Field::Counted, "is out of range"))?;
    Ok(vec![Event::StockCounted {
        sku: sku.clone(),
        counted,
        previous_on_hand: stock.on_hand,
        delta,
        value_delta: money::normalize(value_delta),
        reason,
        shortfall: stock.reserved.saturating_sub(counted),
    }])
}

// Applying the stock's events (`StockReceived`, `StockCounted`) belongs below, next to the
// rules that decide them.

// What the area's events do to the state: `apply`, beside the rules that decide them.

/// Applies a stock event: a receipt or a stocktake.
pub(crate) fn apply<O: Orders>(state: &mut State<O>, event: &Event) {
    match event {
        Event::StockReceived { sku, quantity, unit_cost, value, .. } => {
            let stock = &mut state.product_mut(sku).stock;
            stock.on_hand = add(stock.on_hand, *quantity);
            stock.received = add(stock.received, *quantity);
            stock.value += *value;
            stock.value_received += *value;
            stock.last_unit_cost = *unit_cost;
            resolve_shortfall(stock);
        }
        Event::StockCounted { sku, counted, previous_on_hand, delta, value_delta, shortfall, .. } => {
            let stock = &mut state.product_mut(sku).stock;
            assert_eq!(stock.on_hand, *previous_on_hand);
            assert_eq!(i128::from(*counted) - i128::from(*previous_on_hand), i128::from(*delta));
            stock.on_hand = *counted;
            stock.adjusted = stock.adjusted.checked_add(*delta).unwrap_or_else(|| panic!("adjustment overflow"));
            stock.value += *value_delta;
            stock.value_adjusted += *value_delta;
            assert_eq!(*shortfall, stock.shortfall());
            if *shortfall > 0 {
                stock.shortfall_recorded = true;
            }
            resolve_shortfall(stock);
        }
        other => unreachable!("{} is not a stock event", other.kind()),
    }
}
