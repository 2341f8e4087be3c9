//! End-to-end tests: the real binaries against the real Docker engine, in
//! `tests/`. Their harness is the workspace's one test kit, `ci-testkit`
//! ([`ci_testkit::TestSystem`] and friends), shared with the crates' own
//! integration tests and with `ci-bench`.
