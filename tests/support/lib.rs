//! Shared helpers for scopegate's black-box tests, benches and load tests.

pub mod population;
