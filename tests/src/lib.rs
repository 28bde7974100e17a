//! Test harness: launches real coordinators, agents, LTTng daemons and sshd for the integration tests.
pub mod agents;
pub mod coordinator;
pub mod jobs_support;
pub mod lttng;
pub mod procfs;
pub mod skip;
pub mod sshd;
