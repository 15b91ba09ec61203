//! Strongbox benchmarks and load generator.
