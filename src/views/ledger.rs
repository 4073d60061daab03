//! The double-entry ledger: every money movement the shop's events imply, as balanced
//! journal entries over a fixed chart of accounts.
//!
//! Amounts are signed: a debit is positive, a credit negative, so every entry and the
//! trial balance sum to zero. Postings:
//! - stock received: Dr Inventory, Cr Accounts payable (at cost);
//! - stocktake: a gain Dr Inventory, Cr Shrinkage; a loss Dr Shrinkage, Cr Inventory;
//! - payment: Dr Cash, Cr Customer deposits;
//! - shipment, per line, for the shipped units' share of the line: Dr Customer deposits (net,
//!   or Sales returns for any part already refunded before shipping), Dr Discounts, Cr Sales
//!   revenue (at list price); the first parcel also moves the shipping fee to Shipping revenue;
//!   and Dr Cost of goods sold, Cr Inventory at moving average cost;
//! - refund: Cr Cash; Dr Customer deposits for money not yet earned, otherwise Dr Sales
//!   returns (lines) or Dr Shipping revenue (the fee);
//! - return received: Cr Cost of goods sold at the cost the units left at; Dr Inventory when
//!   resellable, Dr Shrinkage when written off.
//!
//! Cancellations and expiries post nothing themselves: an unpaid order never touched money,
//! and a paid one's refund is its own event.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::command::Condition;
use crate::domain::event::{Event, RefundTarget, Subject};
use crate::domain::ids::{OrderId, Sku, Timestamp};
use crate::domain::money;
use crate::log::record::Envelope;
use crate::memory::pack::{Pack, PackError, Reader};
use crate::memory::spill::Spill;
use crate::memory::tiered::{BlockLog, Keyed, TieredMap};

/// The chart of accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Account {
    Cash,
    Inventory,
    AccountsPayable,
    CustomerDeposits,
    SalesRevenue,
    ShippingRevenue,
    Discounts,
    SalesReturns,
    CostOfGoodsSold,
    Shrinkage,
}

impl Account {
    /// Every account, in chart order.
    pub const ALL: [Account; 10] = [
        Account::Cash,
        Account::Inventory,
        Account::AccountsPayable,
        Account::CustomerDeposits,
        Account::SalesRevenue,
        Account::ShippingRevenue,
        Account::Discounts,
        Account::SalesReturns,
        Account::CostOfGoodsSold,
        Account::Shrinkage,
    ];

    /// The account's name in the chart.
    pub fn name(self) -> &'static str {
        match self {
            Account::Cash => "Cash",
            Account::Inventory => "Inventory",
            Account::AccountsPayable => "Accounts payable",
            Account::CustomerDeposits => "Customer deposits",
            Account::SalesRevenue => "Sales revenue",
            Account::ShippingRevenue => "Shipping revenue",
            Account::Discounts => "Discounts",
            Account::SalesReturns => "Sales returns",
            Account::CostOfGoodsSold => "Cost of goods sold",
            Account::Shrinkage => "Inventory shrinkage and write-offs",
        }
    }
}

/// One balanced journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The event's position.
    pub position: u64,
    /// When it was recorded.
    pub recorded_at: Timestamp,
    /// What happened, for people.
    pub memo: String,
    /// Signed amounts per account: debits positive, credits negative; they sum to zero.
    pub postings: Vec<(Account, Decimal)>,
}

impl Keyed for JournalEntry {
    fn key(&self) -> u64 {
        self.position
    }
}

/// What the ledger remembers of one order line to split money between deposits and revenue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LineBook {
    quantity: u64,
    unit_price: Decimal,
    net_amount: Decimal,
    shipped: u64,
    /// Net amount earned by shipping.
    earned: Decimal,
    /// Refunds paid out of deposits (before the money was earned).
    refunded_from_deposits: Decimal,
}

impl LineBook {
    /// Money paid for this line and still held as a deposit.
    fn deposit_held(&self) -> Decimal {
        (self.net_amount - self.earned - self.refunded_from_deposits).max(Decimal::ZERO)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OrderBook {
    /// One per SKU, in the order's line order: an order has a few lines, and a map's node
    /// would cost more than its lookups save.
    lines: Vec<(Sku, LineBook)>,
    shipping_fee: Decimal,
    shipping_earned: bool,
    shipping_refunded_from_deposits: Decimal,
}

crate::memory::pack::pack_struct!(LineBook {
    quantity,
    unit_price,
    net_amount,
    shipped,
    earned,
    refunded_from_deposits
});
crate::memory::pack::pack_struct!(OrderBook { lines, shipping_fee, shipping_earned, shipping_refunded_from_deposits });
impl crate::memory::pack::Entry for OrderBook {}

/// An account packs as its place in [`Account::ALL`], one byte.
impl Pack for Account {
    fn pack(&self, out: &mut Vec<u8>) {
        match Account::ALL.iter().position(|account| account == self) {
            Some(tag) => out.push(tag as u8),
            None => unreachable!("every account is in the chart"),
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        let tag = input.byte()?;
        Account::ALL.get(usize::from(tag)).copied().ok_or(PackError::Tag("account", tag))
    }
}

crate::memory::pack::pack_struct!(JournalEntry { position, recorded_at, memo, postings });

impl OrderBook {
    fn line_mut(&mut self, sku: &Sku) -> Option<&mut LineBook> {
        self.lines.iter_mut().find(|(line_sku, _)| line_sku == sku).map(|(_, line)| line)
    }
}

/// The ledger projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Full blocks of entries are kept encoded: the journal grows with every payment and
    /// shipment, and is read a page at a time.
    journal: BlockLog<JournalEntry>,
    balances: BTreeMap<Account, Decimal>,
    /// The books of orders placed longest ago are kept encoded, and changed where they are.
    books: TieredMap<OrderId, OrderBook>,
    payments: Decimal,
    refunds: Decimal,
}

/// Builds one journal entry.
struct Entry(Vec<(Account, Decimal)>);

impl Entry {
    fn debit(&mut self, account: Account, amount: Decimal) -> &mut Entry {
        if !amount.is_zero() {
            self.0.push((account, amount));
        }
        self
    }

    fn credit(&mut self, account: Account, amount: Decimal) -> &mut Entry {
        self.debit(account, -amount)
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Every journal entry, in log order; one whose block cannot be read back from the spill
    /// is an error of its own.
    pub fn journal(&self) -> impl Iterator<Item = io::Result<Cow<'_, JournalEntry>>> {
        self.journal.try_iter()
    }

    /// Journal entries after event position `after`, at most `limit`.
    pub fn journal_after(&self, after: u64, limit: usize) -> io::Result<Vec<JournalEntry>> {
        self.journal.after(after, limit)
    }

    /// Lets [`Ledger::spill`] move the books and journal blocks kept encoded to `spill`.
    pub fn attach_spill(&mut self, spill: Arc<Spill>) {
        self.books.attach(spill.clone());
        self.journal.attach(spill);
    }

    /// Brings back into memory the books of the orders `envelopes` are about, so that
    /// folding them reads nothing spilled. On failure the ledger holds the same state.
    pub fn load_for(&mut self, envelopes: &[Envelope]) -> io::Result<()> {
        if self.books.spilled_len() == 0 {
            return Ok(());
        }
        for envelope in envelopes {
            if let Subject::Order(order_id) = envelope.event.subject() {
                self.books.load(order_id)?;
            }
        }
        Ok(())
    }

    /// Moves the books and sealed journal blocks kept encoded in memory to the spill, if one
    /// is attached. On failure what did not move stays in memory.
    pub fn spill(&mut self) -> io::Result<()> {
        self.books.spill_frozen()?;
        self.journal.spill_sealed()?;
        Ok(())
    }

    /// Books and journal blocks out of memory, in the spill.
    pub fn spilled(&self) -> (usize, usize) {
        (self.books.spilled_len(), self.journal.spilled_blocks())
    }

    /// The balance of an account: debits minus credits.
    pub fn balance(&self, account: Account) -> Decimal {
        self.balances.get(&account).copied().unwrap_or(Decimal::ZERO)
    }

    /// Every account with its balance, in chart order.
    pub fn trial_balance(&self) -> Vec<(Account, Decimal)> {
        Account::ALL.iter().map(|a| (*a, money::normalize(self.balance(*a)))).collect()
    }

    /// Money received from buyers.
    pub fn payments(&self) -> Decimal {
        self.payments
    }

    /// Money given back to buyers.
    pub fn refunds(&self) -> Decimal {
        self.refunds
    }

    /// Checks the books against themselves and against the shop view at the same position;
    /// returns the first broken rule. Every entry balances (checked as it is posted), the
    /// trial balance sums to zero, Inventory equals the sum of the SKUs' inventory values,
    /// Cash equals payments less refunds (as the ledger counted them and as the shop view
    /// did), and customer deposits are never overdrawn.
    pub fn check(&self, shop: &super::ShopView) -> Result<(), String> {
        let trial: Decimal = self.balances.values().copied().sum();
        if !trial.is_zero() {
            return Err(format!("the trial balance sums to {trial}"));
        }
        let stock_value: Decimal = shop.products().map(|p| p.stock.value).sum();
        if self.balance(Account::Inventory) != stock_value {
            return Err(format!("Inventory is {}, the SKUs hold {stock_value}", self.balance(Account::Inventory)));
        }
        let cash = self.balance(Account::Cash);
        if cash != self.payments - self.refunds {
            return Err(format!("Cash is {cash}, payments less refunds {}", self.payments - self.refunds));
        }
        let (paid, refunded) = (shop.paid(), shop.refunded());
        if cash != paid - refunded {
            return Err(format!("Cash is {cash}, the orders were paid {paid} and refunded {refunded}"));
        }
        if self.balance(Account::CustomerDeposits) > Decimal::ZERO {
            return Err(format!("customer deposits overdrawn: {}", self.balance(Account::CustomerDeposits)));
        }
        for entry in self.journal.try_iter() {
            let entry = entry.map_err(|error| format!("a journal entry could not be read back: {error}"))?;
            if !entry.postings.iter().map(|(_, a)| *a).sum::<Decimal>().is_zero() {
                return Err(format!("the entry at {} does not balance", entry.position));
            }
        }
        Ok(())
    }

    fn post(&mut self, envelope: &Envelope, memo: String, entry: Entry) {
        if entry.0.is_empty() {
            return;
        }
        let total: Decimal = entry.0.iter().map(|(_, amount)| *amount).sum();
        assert!(total.is_zero(), "unbalanced journal entry at {}: {memo} {:?}", envelope.position, entry.0);
        for (account, amount) in &entry.0 {
            *self.balances.entry(*account).or_insert(Decimal::ZERO) += *amount;
        }
        self.journal.push(JournalEntry {
            position: envelope.position,
            recorded_at: envelope.recorded_at,
            memo,
            // An exact copy: the builder made room for four postings at its first, and an
            // entry of two (a payment) would keep room for four for as long as the journal.
            postings: entry.0.as_slice().to_vec(),
        });
    }

    fn apply_event(&mut self, envelope: &Envelope) {
        let mut entry = Entry(Vec::new());
        let memo = match &envelope.event {
            Event::StockReceived { sku, quantity, value, supplier_ref, .. } => {
                entry.debit(Account::Inventory, *value).credit(Account::AccountsPayable, *value);
                format!("received {quantity} of {sku} ({supplier_ref})")
            }
            Event::StockCounted { sku, delta, value_delta, .. } => {
                entry.debit(Account::Inventory, *value_delta).credit(Account::Shrinkage, *value_delta);
                format!("stocktake of {sku}: {delta:+} units")
            }
            Event::OrderPlaced { order_id, lines, shipping_fee, .. } => {
                let book = OrderBook {
                    lines: lines
                        .iter()
                        .map(|l| {
                            let line = LineBook {
                                quantity: l.quantity,
                                unit_price: l.unit_price,
                                net_amount: l.net_amount,
                                ..LineBook::default()
                            };
                            (l.sku.clone(), line)
                        })
                        .collect(),
                    shipping_fee: *shipping_fee,
                    ..OrderBook::default()
                };
                let distinct =
                    book.lines.iter().enumerate().all(|(i, (sku, _))| book.lines[..i].iter().all(|(s, _)| s != sku));
                assert!(distinct, "order {order_id} placed with a SKU on two lines");
                self.books.insert(order_id.clone(), book);
                return;
            }
            Event::OrderPaid { order_id, payment_id, amount, .. } => {
                self.payments += *amount;
                entry.debit(Account::Cash, *amount).credit(Account::CustomerDeposits, *amount);
                format!("payment {payment_id} for order {order_id}")
            }
            Event::ShipmentDispatched { order_id, shipment_id, lines, .. } => {
                // Changed where it is kept: a book shipped hours to days after its order was
                // placed is usually encoded by then, and thawing it would only freeze another.
                let shipped = self.books.update(order_id, |book| {
                    for shipped in lines {
                        let Some(line) = book.line_mut(&shipped.sku) else { continue };
                        let before = line.shipped;
                        line.shipped += shipped.quantity;
                        let net = money::share(line.net_amount, line.shipped, line.quantity)
                            - money::share(line.net_amount, before, line.quantity);
                        let gross = money::normalize(line.unit_price * Decimal::from(shipped.quantity));
                        let from_deposits = net.min(line.deposit_held());
                        line.earned += net;
                        entry
                            .debit(Account::CustomerDeposits, from_deposits)
                            .debit(Account::SalesReturns, net - from_deposits)
                            .debit(Account::Discounts, gross - net)
                            .credit(Account::SalesRevenue, gross)
                            .debit(Account::CostOfGoodsSold, shipped.cost)
                            .credit(Account::Inventory, shipped.cost);
                    }
                    if !book.shipping_earned {
                        book.shipping_earned = true;
                        let fee_held = book.shipping_fee - book.shipping_refunded_from_deposits;
                        entry
                            .debit(Account::CustomerDeposits, fee_held)
                            .debit(Account::SalesReturns, book.shipping_fee - fee_held)
                            .credit(Account::ShippingRevenue, book.shipping_fee);
                    }
                });
                if shipped.is_none() {
                    return;
                }
                format!("shipment {shipment_id} of order {order_id}")
            }
            Event::RefundIssued { order_id, refund_id, amount, allocation, .. } => {
                self.refunds += *amount;
                let refunded = self.books.update(order_id, |book| {
                    for share in allocation {
                        match &share.target {
                            RefundTarget::Line(sku) => {
                                let Some(line) = book.line_mut(sku) else { continue };
                                let from_deposits = share.amount.min(line.deposit_held());
                                line.refunded_from_deposits += from_deposits;
                                entry
                                    .debit(Account::CustomerDeposits, from_deposits)
                                    .debit(Account::SalesReturns, share.amount - from_deposits);
                            }
                            RefundTarget::Shipping if book.shipping_earned => {
                                entry.debit(Account::ShippingRevenue, share.amount);
                            }
                            RefundTarget::Shipping => {
                                book.shipping_refunded_from_deposits += share.amount;
                                entry.debit(Account::CustomerDeposits, share.amount);
                            }
                        }
                    }
                });
                if refunded.is_none() {
                    return;
                }
                entry.credit(Account::Cash, *amount);
                format!("refund {refund_id} of order {order_id}")
            }
            Event::ReturnReceived { order_id, return_id, lines, .. } => {
                for line in lines {
                    let to = match line.condition {
                        Condition::Resellable => Account::Inventory,
                        Condition::Damaged => Account::Shrinkage,
                    };
                    entry.debit(to, line.cost).credit(Account::CostOfGoodsSold, line.cost);
                }
                format!("return {return_id} of order {order_id} received")
            }
            _ => return,
        };
        self.post(envelope, memo, entry);
    }
}

impl emporium_projections::Projection for Ledger {
    type Fact = Envelope;

    fn name(&self) -> &'static str {
        "ledger"
    }

    fn apply(&mut self, envelope: &Envelope) {
        self.apply_event(envelope);
    }

    fn encode(&self) -> Result<Vec<u8>, emporium_projections::EncodeError> {
        super::encode(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rehearsal::sim::{self, DayConfig};

    #[test]
    fn a_journal_entry_packs_every_account_and_amount_exactly() {
        let postings: Vec<(Account, Decimal)> =
            Account::ALL.iter().zip(-5_i64..).map(|(account, n)| (*account, Decimal::new(n * 10_001, 2))).collect();
        let entry =
            JournalEntry { position: 300, recorded_at: Timestamp(1_700_000_000_000), memo: "m".into(), postings };
        let bytes = crate::memory::pack::pack(&entry, &mut Vec::new());
        assert_eq!(crate::memory::pack::unpack::<JournalEntry>(&bytes), Ok(entry));
        let past_the_chart = Account::ALL.len() as u8;
        assert_eq!(
            crate::memory::pack::unpack::<Account>(&[past_the_chart]),
            Err(PackError::Tag("account", past_the_chart))
        );
    }

    /// Folding a generated day with nearly every order's book frozen between its postings
    /// (so each posting thaws one and freezes another) gives the ledger that keeps every
    /// book as a value, and each frozen book unpacks to what it was.
    #[test]
    fn frozen_books_fold_as_hot_ones() {
        let envelopes = sim::day_envelopes(&DayConfig::new(2_000, 11, crate::rehearsal::demo::DAY_START), "test");
        let mut hot = Ledger::new();
        hot.books.set_hot_max(usize::MAX);
        let mut frozen = Ledger::new();
        frozen.books.set_hot_max(1);
        for envelope in &envelopes {
            hot.apply_event(envelope);
            frozen.apply_event(envelope);
        }
        assert_eq!(hot.books.frozen_len(), 0);
        assert!(frozen.books.frozen_len() + 1 >= frozen.books.len() && frozen.books.len() > 1_500);
        assert!(frozen == hot, "the same books, balances and journal");
        let earned =
            hot.books.values().filter(|book| book.lines.iter().any(|(_, line)| !line.earned.is_zero())).count();
        let refunded = hot
            .books
            .values()
            .filter(|book| book.lines.iter().any(|(_, line)| !line.refunded_from_deposits.is_zero()))
            .count();
        assert!(earned > 0 && refunded > 0, "books with earnings ({earned}) and refunds from deposits ({refunded})");
        let mut scratch = Vec::new();
        for (key, book) in hot.books.iter() {
            let bytes = crate::memory::pack::pack(book.as_ref(), &mut scratch);
            assert_eq!(crate::memory::pack::unpack::<OrderBook>(&bytes).as_ref(), Ok(book.as_ref()), "{key}");
        }
    }
}
