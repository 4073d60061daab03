//! The one integration-test binary: every test of emporium's public behaviour.

mod crash;
mod engine;
mod log;
mod properties;
mod rejections;
mod shop_day;
mod support;
mod transfer;
mod views;
