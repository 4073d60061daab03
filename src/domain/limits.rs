//! Every bound the domain enforces, in one place.
//!
//! Quantities are integers with explicit bounds; arithmetic on them is checked. The
//! bounds are chosen so that no sum of bounded values can overflow a `u64`, and so that
//! every queue and loop in the core has a limit.

/// Longest product title, in characters.
pub const TITLE_LENGTH_MAX: usize = 200;
/// Longest category, region, carrier, supplier reference, in characters.
pub const LABEL_LENGTH_MAX: usize = 64;
/// Longest free-text reason, in characters.
pub const REASON_LENGTH_MAX: usize = 500;
/// Heaviest product, in grams (one tonne).
pub const WEIGHT_G_MAX: u64 = 1_000_000;
/// Largest low-stock threshold, in units.
pub const LOW_STOCK_THRESHOLD_MAX: u64 = 1_000_000_000;
/// Most units received at once.
pub const RECEIPT_QUANTITY_MAX: u64 = 1_000_000_000;
/// Most units a stocktake may count.
pub const COUNTED_QUANTITY_MAX: u64 = 1_000_000_000_000;
/// Most units one SKU may have on hand.
pub const ON_HAND_MAX: u64 = 1_000_000_000_000;
/// Fewest and most lines in an order, reservation, shipment or return.
pub const LINES_MAX: usize = 100;
/// Units on one line of an order or reservation.
pub const LINE_QUANTITY_MAX: u64 = 10_000;
/// Default time to live of a checkout hold: 15 minutes.
pub const RESERVATION_TTL_MS_DEFAULT: u64 = 15 * 60 * 1000;
/// Longest time to live of a checkout hold: 24 hours.
pub const RESERVATION_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Default time an order may stay unpaid: 30 minutes.
pub const PAYMENT_TTL_MS_DEFAULT: u64 = 30 * 60 * 1000;
/// Longest payment time limit a shop may set: 7 days.
pub const PAYMENT_TTL_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most expiries one tick records; a later tick records the rest.
pub const EXPIRIES_PER_TICK_MAX: usize = 10_000;
/// Most parcels one order ships in. Each parcel lengthens the order, its history and every
/// fold of it; the next shipment is refused (`order_limit_reached`), and a log that records
/// more does not fit its shop.
pub const SHIPMENTS_PER_ORDER_MAX: usize = 1_000;
/// Most returns one order may ask for; the next request is refused (`order_limit_reached`).
pub const RETURNS_PER_ORDER_MAX: usize = 100;
/// Most refunds one order may be given, the refund a cancellation issues included; the next
/// refund (or a cancellation that would refund) is refused (`order_limit_reached`).
pub const REFUNDS_PER_ORDER_MAX: usize = 100;
/// Most units one line of a recorded order may hold: the lines of one SKU summed
/// ([`LINES_MAX`] lines of at most [`LINE_QUANTITY_MAX`] units).
pub const ORDER_LINE_UNITS_MAX: u64 = LINES_MAX as u64 * LINE_QUANTITY_MAX;
