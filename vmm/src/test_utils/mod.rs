//! Helpers for tests and benchmarks of the VMM (the `test-utils` feature): the smoke
//! payload, a tiny guest that boots under Moat's VMM and under QEMU alike.

pub mod payload;
