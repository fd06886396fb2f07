//! Shared helpers of the integration tests: service checks and fixtures.
//!
//! Tests here talk to the real Docker Engine, Caddy and git. A missing service
//! is a test failure with a message saying how to start it, never a skip.

pub mod bench;
pub mod caddy_proc;
pub mod cluster;
pub mod command;
pub mod fixtures;
pub mod gitfix;
pub mod reloads;
pub mod services;
pub mod slow_admin;
