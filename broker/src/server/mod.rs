//! Running a broker: [`run()`](run::run) opens the services, binds the
//! listener and serves until shutdown.

pub mod cluster;
pub mod run;

pub use run::{RunningBroker, run, run_with_io};
