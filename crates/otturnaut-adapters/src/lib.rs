//! Adapters to the real world.
