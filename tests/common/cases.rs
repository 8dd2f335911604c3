//! How many cases a property test runs: its own count by default, `PROPTEST_CASES` when set,
//! so a soak (`PROPTEST_CASES=5000 cargo test --release --test engine_model_prop`) can run
//! far more than the suite's bounded default.

pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
