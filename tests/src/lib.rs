//! Workspace-level end-to-end tests.
