//! The one copy of Tracevisor's LTTng code, shared by the tracesd agent (which runs it on its
//! own host) and the coordinator's SSH path (which runs it on a host without an agent):
//!
//! - [`lifecycle`]: the trace job lifecycle (create the session, enable events, start, wait,
//!   destroy, analyse), the [`Executor`](lifecycle::Executor) trait it runs commands through,
//!   [`LocalExecutor`](lifecycle::LocalExecutor) for this host, spec validation and session
//!   names.
//! - [`runner`]: the one way to run external commands: argv only, a cleared environment (no
//!   token reaches a child), a timeout, kill on drop, bounded output, errors that name the
//!   command.
//! - [`capabilities`]: what a host can trace and analyse, asked from the real tools.

pub mod capabilities;
pub mod control;
pub mod lifecycle;
pub mod recorder;
pub mod remote;
pub mod runner;
