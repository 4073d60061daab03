//! The one integration-test binary: every test of emporium's public behaviour.

mod properties;
mod rejections;
mod shop_day;
