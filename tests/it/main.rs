//! Integration tests: the real `ringside` binary on an ephemeral port,
//! spoken to with raw bytes over TCP.

mod admission;
mod app;
mod balancer;
mod coalesce;
mod harness;
mod http;
mod isolation;
mod ops;
mod pgclient;
mod pgfix;
mod pgtls;
mod pipe;
mod replica;
mod runtime;
mod supervise;
mod techempower;
mod tls;
