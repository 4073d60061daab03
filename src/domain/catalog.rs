//! The catalog: listing products, changing their price, delisting and relisting them.
//!
//! A SKU is listed once, with a title and a category of bounded length, a price greater
//! than zero, a unit weight and a low-stock threshold; it cannot be listed again, not even
//! after it is delisted. A price change must change the price, and applies to orders placed
//! after it: an order keeps the prices it recorded. Delisting a listed product stops new
//! holds and orders of it and leaves its stock and its open orders alone; relisting sells a
//! delisted product again. Every rule here checks its input first and then reads only the
//! product.

use rust_decimal::Decimal;

use crate::domain::decide::{check_at_most, known_product, listed_product};
use crate::domain::event::Event;
use crate::domain::ids::{Sku, check_text};
use crate::domain::limits::{LABEL_LENGTH_MAX, LOW_STOCK_THRESHOLD_MAX, TITLE_LENGTH_MAX, WEIGHT_G_MAX};
use crate::domain::money::{self, Sign, UNIT_AMOUNT_MAX};
use crate::domain::orders::Orders;
use crate::domain::rejection::{Field, Rejection};
use crate::domain::state::{Product, State, Stock};

/// Decides `Command::ListProduct`.
pub(crate) fn decide_list<O: Orders>(
    state: &State<O>,
    sku: &Sku,
    title: &str,
    category: &str,
    price: Decimal,
    weight_g: u64,
    low_stock_threshold: u64,
) -> Result<Vec<Event>, Rejection> {
    sku.check()?;
    check_text(Field::Title, title, TITLE_LENGTH_MAX)?;
    check_text(Field::Category, category, LABEL_LENGTH_MAX)?;
    let price = money::check_amount(Field::Price, price, Sign::Positive, UNIT_AMOUNT_MAX)?;
    check_at_most(Field::WeightG, weight_g, WEIGHT_G_MAX)?;
    check_at_most(Field::LowStockThreshold, low_stock_threshold, LOW_STOCK_THRESHOLD_MAX)?;
    if state.product(sku).is_some() {
        return Err(Rejection::ProductAlreadyListed { sku: sku.clone() });
    }
    Ok(vec![Event::ProductListed {
        sku: sku.clone(),
        title: title.to_owned(),
        category: category.to_owned(),
        price,
        weight_g,
        low_stock_threshold,
    }])
}

/// Decides `Command::ChangePrice`.
pub(crate) fn decide_change_price<O: Orders>(
    state: &State<O>,
    sku: &Sku,
    price: Decimal,
) -> Result<Vec<Event>, Rejection> {
    sku.check()?;
    let price = money::check_amount(Field::Price, price, Sign::Positive, UNIT_AMOUNT_MAX)?;
    let product = known_product(state, sku)?;
    if product.price == price {
        return Err(Rejection::PriceUnchanged { sku: sku.clone(), price });
    }
    Ok(vec![Event::PriceChanged { sku: sku.clone(), old_price: product.price, new_price: price }])
}

/// Decides `Command::DelistProduct`.
pub(crate) fn decide_delist<O: Orders>(state: &State<O>, sku: &Sku) -> Result<Vec<Event>, Rejection> {
    sku.check()?;
    listed_product(state, sku)?;
    Ok(vec![Event::ProductDelisted { sku: sku.clone() }])
}

/// Decides `Command::RelistProduct`.
pub(crate) fn decide_relist<O: Orders>(state: &State<O>, sku: &Sku) -> Result<Vec<Event>, Rejection> {
    sku.check()?;
    if known_product(state, sku)?.listed {
        return Err(Rejection::ProductNotDelisted { sku: sku.clone() });
    }
    Ok(vec![Event::ProductRelisted { sku: sku.clone() }])
}

// Applying the catalog's events (`ProductListed`, `PriceChanged`, `ProductDelisted`,
// `ProductRelisted`) belongs below, next to the rules that decide them.

// What the area's events do to the state: `apply`, beside the rules that decide them.

/// Applies a catalog event: a product listed, repriced, delisted or relisted.
pub(crate) fn apply<O: Orders>(state: &mut State<O>, event: &Event) {
    match event {
        Event::ProductListed { sku, title, category, price, weight_g, low_stock_threshold } => {
            assert!(!state.products.contains_key(sku), "SKU {sku} listed twice");
            let product = Product {
                sku: sku.clone(),
                title: title.clone(),
                category: category.clone(),
                price: *price,
                weight_g: *weight_g,
                low_stock_threshold: *low_stock_threshold,
                listed: true,
                stock: Stock::default(),
            };
            state.products.insert(sku.clone(), product);
        }
        Event::PriceChanged { sku, new_price, .. } => {
            state.product_mut(sku).price = *new_price;
        }
        Event::ProductDelisted { sku } => {
            state.product_mut(sku).listed = false;
        }
        Event::ProductRelisted { sku } => {
            state.product_mut(sku).listed = true;
        }
        other => unreachable!("{} is not a catalog event", other.kind()),
    }
}
