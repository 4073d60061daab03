//! The `emporium` command line. For now it runs the scripted shop day and prints the stock
//! and orders it ends with.

use std::process::ExitCode;

use emporium::demo;

fn main() -> ExitCode {
    let script = demo::shop_day();
    let (state, events) = match demo::run(&script) {
        Ok(day) => day,
        Err((index, rejection)) => {
            eprintln!("error: command {} of the shop day was rejected: {rejection}", index + 1);
            return ExitCode::FAILURE;
        }
    };
    println!("Shop day: {} commands, {} events", script.len(), events.len());
    println!();
    println!(
        "{:<10} {:>8} {:>9} {:>10} {:>9} {:>12}  listed",
        "SKU", "on hand", "reserved", "available", "shortfall", "value"
    );
    for product in state.products() {
        let s = &product.stock;
        println!(
            "{:<10} {:>8} {:>9} {:>10} {:>9} {:>12.2}  {}",
            product.sku,
            s.on_hand,
            s.reserved,
            s.available(),
            s.shortfall(),
            s.value,
            if product.listed { "yes" } else { "no" }
        );
    }
    println!();
    println!(
        "{:<8} {:<8} {:<18} {:>9} {:>9} {:>9}  returns    refunds",
        "order", "customer", "status", "total", "paid", "refunded"
    );
    let mut orders: Vec<_> = state.orders().collect();
    orders.sort_by(|a, b| a.id.cmp(&b.id));
    for order in orders {
        println!(
            "{:<8} {:<8} {:<18} {:>9.2} {:>9.2} {:>9.2}  {:<10} {:?}",
            order.id,
            order.customer_id,
            format!("{:?}", order.status()),
            order.total,
            order.paid(),
            order.refunded,
            format!("{:?}", order.return_state()),
            order.refund_state()
        );
    }
    ExitCode::SUCCESS
}
