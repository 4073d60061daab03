//! The tiered order store: a shop's orders kept as the domain's [`Orders`], in memory or out
//! of it.
//!
//! Guarantees, before the code:
//! - **One store, however held.** [`TieredOrders`] keeps the orders changed most recently as
//!   values, the rest encoded ([`crate::memory::pack`]), and, with a spill attached, moves
//!   encoded ones out of memory ([`State::spill_orders`]). Reads ([`Orders::get`],
//!   [`Orders::iter`]) reach every order wherever it is, reading a spilled one back; a failed
//!   read is an [`Unreadable`], never a panic.
//! - **Changes are cheap where they land.** A later event of an order kept encoded is
//!   appended to its bytes (`append_change`) and applied when the order is next read, up to
//!   [`FROZEN_ORDER_BYTES_MAX`]; an order is never made a value again for a change.
//! - **Changes never do IO.** Changing a spilled order is a broken precondition: the shell
//!   first brings back what a command may touch ([`State::load_for`]).
//! - **Snapshots as held.** The store serializes as its tiers hold it
//!   ([`crate::memory::tiered::image`]), spilled orders apart ([`State::spilled_orders`]);
//!   only engine snapshots, read back by the same build, serialize it.
//!
//! [`State`] here is the domain's state with its orders in this store: what the engine, the
//! views and the tools hold, with the memory settings this layer adds to it.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::command::Command;
use crate::domain::event::Event;
use crate::domain::ids::{OrderId, Timestamp};
use crate::domain::orders::{Orders, Unreadable};
use crate::domain::state::Order;
use crate::memory::pack::{Entry, Pack, PackError, Reader, put_varint};
use crate::memory::spill::Spill;
use crate::memory::tiered::{SpilledEntries, TieredMap};

/// A shop's state with its orders in a [`TieredOrders`].
pub type State = crate::domain::state::State<TieredOrders>;

/// A shop's orders, the newest as values and the rest encoded or spilled. See the module
/// documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TieredOrders {
    map: TieredMap<OrderId, Order>,
}

impl Serialize for TieredOrders {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::memory::tiered::image::serialize(&self.map, serializer)
    }
}

impl<'de> Deserialize<'de> for TieredOrders {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(TieredOrders { map: crate::memory::tiered::image::deserialize(deserializer)? })
    }
}

fn unreadable(order_id: &OrderId, error: &io::Error) -> Unreadable {
    Unreadable { order_id: order_id.clone(), reason: error.to_string() }
}

impl Orders for TieredOrders {
    fn get(&self, id: &OrderId) -> Result<Option<Cow<'_, Order>>, Unreadable> {
        self.map.fetch(id).map_err(|error| unreadable(id, &error))
    }

    fn contains(&self, id: &OrderId) -> bool {
        self.map.contains_key(id)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn insert(&mut self, order: Order) -> bool {
        self.map.insert(order.id.clone(), order)
    }

    fn change<R>(&mut self, id: &OrderId, change: impl FnOnce(&mut Order) -> R) -> Option<R> {
        self.map.update(id, change)
    }

    /// An order kept encoded is not decoded: the event is appended to its bytes
    /// (`append_change`) and applied when the order is next read ([`Order`]'s
    /// [`Entry::thaw`]), unless the order has grown to [`FROZEN_ORDER_BYTES_MAX`] with
    /// changes already, when it is decoded, changed and encoded with them all applied.
    fn change_by(&mut self, id: &OrderId, event: &Event) -> Option<u64> {
        self.map.update_or_append(
            id,
            |order| {
                order.apply_change(event);
                order.count_event()
            },
            |bytes, scratch| append_change(bytes, event, scratch),
        )
    }

    fn prefetch(&self, id: &OrderId) -> u8 {
        self.map.prefetch(id, |order| order.stream_version.to_le_bytes()[0])
    }

    fn iter(&self) -> impl Iterator<Item = Result<Cow<'_, Order>, Unreadable>> {
        self.map.try_iter().map(|entry| match entry {
            Ok((_, order)) => Ok(order),
            Err((order_id, error)) => Err(unreadable(order_id, &error)),
        })
    }
}

impl TieredOrders {
    /// Orders kept encoded rather than as values, in memory or spilled.
    pub fn frozen_len(&self) -> usize {
        self.map.frozen_len()
    }

    /// Orders out of memory, in a spill.
    pub fn spilled_len(&self) -> usize {
        self.map.spilled_len()
    }

    /// The bytes of the order `id` when it is kept encoded in memory.
    #[cfg(test)]
    fn frozen_bytes(&self, id: &OrderId) -> Option<&[u8]> {
        self.map.frozen_bytes(id)
    }
}

/// What this layer adds to a shop's state: how its orders are kept. Settings and IO, never
/// facts: none of it changes what the state holds, how it compares or how it serializes.
impl State {
    /// Orders kept encoded rather than as values.
    pub fn orders_frozen(&self) -> usize {
        self.order_store().frozen_len()
    }

    /// Orders out of memory, in a spill.
    pub fn orders_spilled(&self) -> usize {
        self.order_store().spilled_len()
    }

    /// Keeps at most `hot_max` (at least 1) orders as values, encoding the ones changed
    /// longest ago beyond that.
    pub fn set_orders_hot_max(&mut self, hot_max: usize) {
        self.order_store_mut().map.set_hot_max(hot_max);
    }

    /// Lets [`State::spill_orders`] move orders kept encoded to `spill`.
    pub fn attach_orders_spill(&mut self, spill: Arc<Spill>) {
        self.order_store_mut().map.attach(spill);
    }

    /// Moves the orders kept encoded in memory to the spill, if one is attached; returns how
    /// many orders are spilled. On failure they stay in memory and nothing changes.
    pub fn spill_orders(&mut self) -> io::Result<usize> {
        self.order_store_mut().map.spill_frozen()
    }

    /// The spilled orders, for an engine snapshot that writes them apart from the state's
    /// image, read back off the writer.
    pub fn spilled_orders(&self) -> SpilledEntries<OrderId> {
        self.order_store().map.spilled()
    }

    /// Gives back the orders [`State::spilled_orders`] wrote apart, encoded, to a state read
    /// from an image. Refuses (and changes nothing) if one is already in the state.
    pub fn restore_orders(&mut self, orders: Vec<(OrderId, Box<[u8]>)>) -> Result<(), &'static str> {
        self.order_store_mut().map.restore_frozen(orders)
    }

    /// Brings back into memory every spilled order that deciding `command` at `now` may read
    /// or change ([`State::orders_touched_by`]). After this, deciding and applying the command
    /// do no IO. On failure the state holds the same orders (some may be back in memory).
    pub fn load_for(&mut self, now: Timestamp, command: &Command) -> io::Result<()> {
        if self.order_store().spilled_len() == 0 {
            return Ok(());
        }
        for order_id in self.orders_touched_by(now, command) {
            self.order_store_mut().map.load(&order_id)?;
        }
        Ok(())
    }
}

/// The most bytes an encoded order holds with the changes appended to it: one that has
/// reached it is decoded at its next change, and encoded again with all of them applied. An
/// order of three lines encodes in about 230 bytes; a parcel appends about 50 to 90, a
/// delivery about 15, so a promotion day's order rarely reaches it.
pub const FROZEN_ORDER_BYTES_MAX: usize = 1024;

/// The changes [`append_change`] appends to an encoded order, one per event kind that
/// [`Order::apply_change`] applies: its tag, and the event's fields it carries (all but the order's
/// id) in the order they are written. `pack_change` and `unpack_change` are both made from
/// this one list, so the two cannot disagree.
macro_rules! order_changes {
    ($($tag:ident = $value:literal => $variant:ident { $($field:ident),+ $(,)? }),+ $(,)?) => {
        $(const $tag: u8 = $value;)+

        /// Writes `event`'s change: its tag, then its fields.
        fn pack_change(event: &Event, out: &mut Vec<u8>) {
            match event {
                $(Event::$variant { $($field,)+ .. } => {
                    out.push($tag);
                    $(Pack::pack($field, out);)+
                })+
                other => unreachable!("{} changes more than its order", other.kind()),
            }
        }

        /// The event a change appended by [`append_change`] to the order `order_id` came
        /// from.
        fn unpack_change(order_id: &OrderId, input: &mut Reader<'_>) -> Result<Event, PackError> {
            let order_id = order_id.clone();
            Ok(match input.byte()? {
                $($tag => Event::$variant { order_id, $($field: Pack::unpack(input)?),+ },)+
                tag => return Err(PackError::Tag("order change", tag)),
            })
        }
    };
}

order_changes! {
    CHANGE_SHIPPED = 0 => ShipmentDispatched { shipment_id, carrier, tracking_number, lines, shipped_at },
    CHANGE_DELIVERED = 1 => ShipmentDelivered { shipment_id, delivered_at },
    CHANGE_RETURN_REQUESTED = 2 => ReturnRequested { return_id, lines, reason, requested_at },
    CHANGE_RETURN_RECEIVED = 3 => ReturnReceived { return_id, lines, received_at },
    CHANGE_REFUNDED = 4 => RefundIssued { refund_id, amount, return_id, allocation, refunded_at },
}

/// Appends `event` to `bytes`, an encoded order (its stream version first, see `pack.rs`)
/// with the changes appended to it so far, and counts the version over the old one in
/// place; returns the new version. The change is written to `scratch` first, so that
/// `bytes` grow once by exactly its length. `None`, with `bytes` as they were, when the
/// order should rather be decoded: it has reached [`FROZEN_ORDER_BYTES_MAX`], its new
/// version takes a byte more than the old one (at 128, 16,384, ...), or its bytes do not
/// start with a version (then the decoding reports them).
fn append_change(bytes: &mut Vec<u8>, event: &Event, scratch: &mut Vec<u8>) -> Option<u64> {
    if bytes.len() >= FROZEN_ORDER_BYTES_MAX {
        return None;
    }
    let mut input = Reader::new(bytes);
    let version = input.varint().ok()?.checked_add(1)?;
    let version_bytes = bytes.len() - input.rest().len();
    scratch.clear();
    put_varint(scratch, version);
    if scratch.len() != version_bytes {
        return None;
    }
    pack_change(event, scratch);
    bytes.reserve_exact(scratch.len() - version_bytes);
    bytes[..version_bytes].copy_from_slice(&scratch[..version_bytes]);
    bytes.extend_from_slice(&scratch[version_bytes..]);
    Some(version)
}

/// A frozen order is its encoding, its stream version already counting the changes
/// appended after it, which are applied in order as it is read.
impl Entry for Order {
    fn thaw(bytes: &[u8]) -> Result<Self, PackError> {
        let mut input = Reader::new(bytes);
        let mut order = Order::unpack(&mut input)?;
        // Each change takes at least its tag byte, so this ends with the bytes.
        while !input.rest().is_empty() {
            let event = unpack_change(&order.id, &mut input)?;
            order.apply_change(&event);
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{RefundShare, RefundTarget, Subject};
    use crate::domain::ids::RefundId;
    use crate::rehearsal::sim::{self, DayConfig};
    use rust_decimal::Decimal;

    /// An order's later events change it where it is kept: after a whole day (payments,
    /// shipments, deliveries, returns), the orders kept as values are the ones placed last,
    /// not the ones changed last, and the day folds to the same state as with every order
    /// kept as a value. Each event tells the version it brought its order to, encoded or not.
    #[test]
    fn later_events_leave_an_encoded_order_encoded() {
        let hot_max = 50;
        let envelopes = sim::day_envelopes(&DayConfig::new(600, 7, crate::rehearsal::demo::DAY_START), "test");
        let mut state = State::new();
        state.set_orders_hot_max(hot_max);
        let mut all_hot = State::new();
        all_hot.set_orders_hot_max(usize::MAX);
        for envelope in &envelopes {
            let version = state.apply(&envelope.event);
            match envelope.event.subject() {
                Subject::Order(id) => {
                    assert_eq!(version, Some(envelope.stream_version), "the version the log recorded");
                    assert_eq!(
                        version,
                        state.order(id).expect("in memory").map(|order| order.stream_version),
                        "the version the order holds"
                    );
                }
                Subject::Sku(_) | Subject::Reservation(_) => assert_eq!(version, None),
            }
        }
        // Reading ahead changes nothing: the same state as one event at a time.
        all_hot.apply_all(envelopes.iter().map(|envelope| &envelope.event));
        assert!(state == all_hot, "the same orders whichever tier holds them");
        let placed: Vec<&OrderId> = envelopes
            .iter()
            .filter_map(|envelope| match &envelope.event {
                Event::OrderPlaced { order_id, .. } => Some(order_id),
                _ => None,
            })
            .collect();
        let changed_after_placing =
            envelopes.iter().filter(|e| matches!(e.event, Event::ShipmentDelivered { .. })).count();
        assert!(placed.len() > 4 * hot_max && changed_after_placing > hot_max, "a day that turns the hot tier over");
        let (older, newest) = placed.split_at(placed.len() - hot_max);
        assert!(
            newest.iter().all(|id| matches!(state.order(id), Ok(Some(Cow::Borrowed(_))))),
            "the newest placed are values"
        );
        assert!(older.iter().all(|id| matches!(state.order(id), Ok(Some(Cow::Owned(_))))), "the rest stay encoded");
    }

    /// Changes appended to an encoded order are bounded: one that reached
    /// `FROZEN_ORDER_BYTES_MAX` is decoded at its next change and encoded with them all
    /// applied. Every change still counts in the version and folds to what the order kept
    /// as a value comes to.
    #[test]
    fn an_encoded_order_with_many_changes_is_encoded_again() {
        let envelopes = sim::day_envelopes(&DayConfig::new(60, 7, crate::rehearsal::demo::DAY_START), "test");
        let mut state = State::new();
        state.set_orders_hot_max(1);
        let mut all_hot = State::new();
        all_hot.set_orders_hot_max(usize::MAX);
        state.apply_all(envelopes.iter().map(|envelope| &envelope.event));
        all_hot.apply_all(envelopes.iter().map(|envelope| &envelope.event));
        let cent = Decimal::new(1, 2);
        let refunds = 60u32;
        let Some((order_id, sku)) = all_hot.orders().map(|order| order.expect("in memory")).find_map(|order| {
            let line = order.lines.iter().find(|l| l.net_amount - l.refunded >= cent * Decimal::from(refunds))?;
            let open = order.payment.is_some() && order.closure.is_none();
            let frozen = matches!(state.order(&order.id), Ok(Some(Cow::Owned(_))));
            (open && frozen).then(|| (order.id.clone(), line.sku.clone()))
        }) else {
            panic!("the day has a paid, encoded order with a line to refund");
        };
        let (mut appended, mut reencoded) = (0, 0);
        let mut scratch = Vec::new();
        for n in 0..refunds {
            let event = Event::RefundIssued {
                order_id: order_id.clone(),
                refund_id: RefundId::from(format!("R-{n}").as_str()),
                amount: cent,
                return_id: None,
                allocation: vec![RefundShare { target: RefundTarget::Line(sku.clone()), amount: cent }],
                refunded_at: Timestamp(crate::rehearsal::demo::DAY_START.0 + 1_000 * u64::from(n)),
            };
            let before = state.order_store().frozen_bytes(&order_id).map(<[u8]>::len);
            assert_eq!(state.apply(&event), all_hot.apply(&event), "refund {n}: the version");
            let (Some(before), Some(after)) = (before, state.order_store().frozen_bytes(&order_id)) else {
                panic!("refund {n}: the order stays encoded");
            };
            if before < FROZEN_ORDER_BYTES_MAX {
                assert!(after.len() > before && after.len() < FROZEN_ORDER_BYTES_MAX + 64, "refund {n}: appended");
                appended += 1;
            } else {
                let Ok(Some(order)) = state.order(&order_id) else { panic!("the order is there") };
                let encoded = crate::memory::pack::pack(&*order, &mut scratch);
                assert_eq!(after, &encoded[..], "refund {n}: encoded again with its changes applied");
                reencoded += 1;
            }
        }
        assert!(appended > 0 && reencoded > 0, "{appended} appended, then {reencoded} encoded again");
        assert!(state.order(&order_id) == all_hot.order(&order_id), "the same order, its changes applied");
        assert!(state == all_hot);
    }

    /// A change is appended in place, the version counted over the old one, unless the new
    /// version takes a byte more: then the order's bytes are left as they were, for the
    /// caller to decode, change and encode it.
    #[test]
    fn a_change_is_appended_in_place_unless_the_version_grows_a_byte() {
        let envelopes = sim::day_envelopes(&DayConfig::new(20, 7, crate::rehearsal::demo::DAY_START), "test");
        let mut state = State::new();
        state.set_orders_hot_max(usize::MAX);
        state.apply_all(envelopes.iter().map(|envelope| &envelope.event));
        let open = state
            .orders()
            .map(|order| order.expect("in memory"))
            .find(|order| order.payment.is_some() && order.closure.is_none());
        let Some(order) = open.map(Cow::into_owned) else {
            panic!("the day has a paid, open order");
        };
        let cent = Decimal::new(1, 2);
        let event = Event::RefundIssued {
            order_id: order.id.clone(),
            refund_id: RefundId::from("R-in-place"),
            amount: cent,
            return_id: None,
            allocation: vec![RefundShare { target: RefundTarget::Line(order.lines[0].sku.clone()), amount: cent }],
            refunded_at: Timestamp(crate::rehearsal::demo::DAY_START.0 + 1_000),
        };
        let mut scratch = Vec::new();
        for (version, grows) in [(126u64, false), (127, true), (16_382, false), (16_383, true)] {
            let mut before = order.clone();
            before.stream_version = version;
            let mut bytes = crate::memory::pack::pack(&before, &mut scratch).into_vec();
            let original = bytes.clone();
            let appended = append_change(&mut bytes, &event, &mut scratch);
            if grows {
                assert_eq!(appended, None, "version {version}: declined");
                assert_eq!(bytes, original, "version {version}: left as they were");
                continue;
            }
            assert_eq!(appended, Some(version + 1), "version {version}: counted");
            let version_bytes = if version < 128 { 1 } else { 2 };
            assert_eq!(&bytes[version_bytes..original.len()], &original[version_bytes..], "version {version}: kept");
            assert_eq!(bytes.capacity(), bytes.len(), "version {version}: grown by exactly the change");
            let mut after = before.clone();
            after.apply_change(&event);
            after.stream_version = version + 1;
            assert_eq!(<Order as Entry>::thaw(&bytes), Ok(after), "version {version}: thaws with the change");
        }
    }
}
