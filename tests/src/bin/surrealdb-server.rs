//! `surrealdb-server`: SurrealDB's own server (the `surreal` binary's entry point) at the exact
//! version of the coordinator's SDK, for the tests and benchmarks that share one database
//! between several coordinators. It takes `surreal`'s arguments:
//! `surrealdb-server start --bind 127.0.0.1:PORT --user U --pass P memory`.

// SurrealDB's own binary raises this too: the release build's layout of its query engine's
// futures is deeper than the default 128.
#![recursion_limit = "256"]

fn main() -> std::process::ExitCode {
    surrealdb_server::init(surrealdb_server::core::CommunityComposer())
}
