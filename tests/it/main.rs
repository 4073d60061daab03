//! The one integration-test binary: every test of emporium's public behaviour.

mod architecture;
mod crash;
mod engine;
mod faults;
mod http;
mod inputs;
mod limits;
mod loadgen;
mod log;
mod meaning;
mod properties;
mod rejections;
mod service;
mod shop_day;
mod support;
mod transfer;
mod views;
mod witness;
