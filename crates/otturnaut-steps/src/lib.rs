//! The typestate deploy pipeline.
