//! The command table: every command once, with its kind (its name, a batch item's `type`),
//! its body type, its route and the resource it acts on.
//!
//! `commands!` makes of the table everything that would otherwise list the commands again:
//! [`WireCommand`] (a command as it arrives, one variant a row) with its per-command methods,
//! and [`ROUTES`], which the router registers, the body parser reads and the API description
//! lists. A new command is one row here, plus its body type and that body's conversion into
//! the domain's command in `bodies.rs`.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;

use super::bodies::{
    CancelBody, ChangePriceBody, DelistBody, DeliveryBody, ListProductBody, PayBody, PlaceOrderBody, ReceiveStockBody,
    RefundBody, ReleaseBody, RelistBody, ReserveBody, ReturnBody, ReturnReceiptBody, ShipBody, StocktakeBody,
};
use super::parse;
use super::wire::ResourceRef;
use crate::domain::command::Command;

/// Turns the table into [`WireCommand`], its methods and [`ROUTES`]. A row:
///
/// `"kind" => Variant(Body) { route: Method "/path", creates: bool, acts_on: Resource(field),
/// summary: "..." }`
///
/// `creates` says whether an accepted command is answered 201 (it made a resource of its
/// own) rather than 200; `acts_on` names the resource's type and the body field holding its id.
macro_rules! commands {
    ($(
        $kind:literal => $variant:ident($body:ident) {
            route: $method:ident $path:literal, creates: $creates:literal, acts_on: $resource:ident($field:ident),
            summary: $summary:literal $(,)?
        }
    )*) => {
        /// A command as a batch item carries it: its `type` and its body.
        #[derive(Clone, Debug, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        #[allow(missing_docs)]
        pub enum WireCommand {
            $(#[serde(rename = $kind)] $variant($body),)*
        }

        $(impl From<$body> for WireCommand {
            fn from(body: $body) -> WireCommand {
                WireCommand::$variant(body)
            }
        })*

        impl WireCommand {
            /// The command's snake_case name, as in a batch's `type`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(WireCommand::$variant(_) => $kind,)*
                }
            }

            /// Whether the command creates a resource of its own (answered 201).
            pub fn creates(&self) -> bool {
                match self {
                    $(WireCommand::$variant(_) => $creates,)*
                }
            }

            /// The command id from the body.
            pub fn command_id(&self) -> Option<&str> {
                match self {
                    $(WireCommand::$variant(body) => body.command_id.as_deref(),)*
                }
            }

            /// The resource the command acts on.
            pub fn resource(&self) -> ResourceRef {
                match self {
                    $(WireCommand::$variant(body) => Resource::$resource.at(&body.$field),)*
                }
            }

            /// The domain command; the domain validates every field.
            pub fn into_command(self) -> Command {
                match self {
                    $(WireCommand::$variant(body) => Command::from(body),)*
                }
            }
        }

        /// Every command route, in the table's order.
        pub static ROUTES: &[Route] = &[$(
            Route {
                method: Verb::$method,
                path: $path,
                kind: $kind,
                summary: $summary,
                straight: if names_only_the_shop($path) { Some(parse::straight::<$body>) } else { None },
                schema: schema_of::<$body>,
            },
        )*];
    };
}

commands! {
    "list_product" => ListProduct(ListProductBody) {
        route: Post "/products", creates: true, acts_on: Product(sku),
        summary: "List a new product",
    }
    "change_price" => ChangePrice(ChangePriceBody) {
        route: Post "/products/{sku}/price", creates: false, acts_on: Product(sku),
        summary: "Change the price of later orders",
    }
    "delist_product" => DelistProduct(DelistBody) {
        route: Post "/products/{sku}/delist", creates: false, acts_on: Product(sku),
        summary: "Stop selling a product",
    }
    "relist_product" => RelistProduct(RelistBody) {
        route: Post "/products/{sku}/relist", creates: false, acts_on: Product(sku),
        summary: "Sell a delisted product again",
    }
    "receive_stock" => ReceiveStock(ReceiveStockBody) {
        route: Post "/products/{sku}/receipts", creates: false, acts_on: Product(sku),
        summary: "Receive stock from a supplier",
    }
    "stocktake" => Stocktake(StocktakeBody) {
        route: Post "/products/{sku}/stocktakes", creates: false, acts_on: Product(sku),
        summary: "Record a count of the shelf",
    }
    "reserve_stock" => ReserveStock(ReserveBody) {
        route: Post "/reservations", creates: true, acts_on: Reservation(reservation_id),
        summary: "Hold stock for a checkout, all lines or none",
    }
    "release_reservation" => ReleaseReservation(ReleaseBody) {
        route: Delete "/reservations/{reservation_id}", creates: false, acts_on: Reservation(reservation_id),
        summary: "Release a checkout hold",
    }
    "place_order" => PlaceOrder(PlaceOrderBody) {
        route: Post "/orders", creates: true, acts_on: Order(order_id),
        summary: "Place an order at the current prices",
    }
    "pay" => Pay(PayBody) {
        route: Post "/orders/{order_id}/payments", creates: false, acts_on: Order(order_id),
        summary: "Pay an order in full",
    }
    "cancel" => Cancel(CancelBody) {
        route: Post "/orders/{order_id}/cancel", creates: false, acts_on: Order(order_id),
        summary: "Cancel an order before it ships; a paid order is refunded",
    }
    "ship" => Ship(ShipBody) {
        route: Post "/orders/{order_id}/shipments", creates: true, acts_on: Order(order_id),
        summary: "Ship a parcel of a paid order",
    }
    "confirm_delivery" => ConfirmDelivery(DeliveryBody) {
        route: Post "/orders/{order_id}/shipments/{shipment_id}/delivery", creates: false, acts_on: Order(order_id),
        summary: "Confirm a parcel arrived",
    }
    "request_return" => RequestReturn(ReturnBody) {
        route: Post "/orders/{order_id}/returns", creates: true, acts_on: Order(order_id),
        summary: "Ask to return shipped units",
    }
    "receive_return" => ReceiveReturn(ReturnReceiptBody) {
        route: Post "/orders/{order_id}/returns/{return_id}/receipt", creates: false, acts_on: Order(order_id),
        summary: "Record a returned parcel's inspection",
    }
    "refund" => Refund(RefundBody) {
        route: Post "/orders/{order_id}/refunds", creates: true, acts_on: Order(order_id),
        summary: "Give money back, with or without a return",
    }
}

/// The HTTP method of a command route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

/// A command route: path parameters are named after the body fields they fill.
#[derive(Debug)]
pub struct Route {
    /// The method.
    pub method: Verb,
    /// The path below `/v1/shops/{shop}`.
    pub path: &'static str,
    /// The command's `type`.
    pub kind: &'static str,
    /// What it does, for the API description.
    pub summary: &'static str,
    /// Reads the command straight from a body: only on a route whose path names nothing
    /// but the shop, so that the path fills in no field.
    pub straight: Option<Straight>,
    /// The schema of its body, for the API description.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
}

/// A command read straight from its body, or `None` (see [`parse::straight`]).
pub type Straight = fn(&[u8]) -> Option<WireCommand>;

/// What a command acts on, and where its receipt says to read it.
#[derive(Clone, Copy, Debug)]
enum Resource {
    Product,
    Reservation,
    Order,
}

impl Resource {
    /// The resource `id` of this type.
    fn at(self, id: &str) -> ResourceRef {
        let (kind, href) = match self {
            Resource::Product => ("product", format!("stock/{id}")),
            Resource::Reservation => ("reservation", format!("reservations/{id}")),
            Resource::Order => ("order", format!("orders/{id}")),
        };
        ResourceRef { kind, id: id.to_owned(), href }
    }
}

/// Whether a path has no parameters: a command on it takes every field from its body.
const fn names_only_the_shop(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            return false;
        }
        i += 1;
    }
    true
}

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemars::generate::SchemaSettings;

    /// A path parameter fills the body field of its name, so a row whose path names a field
    /// its body lacks would refuse every request.
    #[test]
    fn every_path_parameter_is_a_field_of_its_body() {
        let mut generator = SchemaSettings::openapi3().into_generator();
        for route in ROUTES {
            let schema = (route.schema)(&mut generator).to_value();
            let name = schema["$ref"].as_str().and_then(|r| r.rsplit('/').next()).expect("a named body");
            let definitions = generator.definitions();
            let properties = definitions[name]["properties"].as_object().expect("an object body");
            let fields = route.path.split('/').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'));
            for field in fields {
                assert!(properties.contains_key(field), "{}: {field} is not a field of {name}", route.kind);
            }
            assert_eq!(route.straight.is_some(), !route.path.contains('{'), "{}", route.kind);
        }
    }
}
