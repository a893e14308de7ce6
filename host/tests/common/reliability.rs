//! Rows of `docs/reliability.md`. Each reliability scenario (in any test
//! file) records one row before it asserts, so a failing scenario is
//! reported too; `scripts/reliability-table.sh` runs the suites and
//! assembles the rows into the table.

use std::path::{Path, PathBuf};

/// One row: what was injected, how often, what happened, and the records
/// (or outputs) lost and duplicated against an uninterrupted run.
pub struct Row<'a> {
    /// Stable scenario name; also the row's file name, so a rerun replaces it.
    pub scenario: &'a str,
    pub injected: &'a str,
    pub times: usize,
    /// "identical to an uninterrupted run", "refused: …", or "DIFFERS: …".
    pub outcome: &'a str,
    pub lost: usize,
    /// What `lost` is counted out of (outputs or records expected).
    pub out_of: usize,
    pub duplicated: usize,
}

/// Where the rows are collected.
pub fn rows_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability")
}

impl Row<'_> {
    pub fn write(&self) {
        let dir = rows_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let row = format!(
            "| {} | {} | {} | {} | {} of {} | {} |\n",
            self.scenario,
            self.injected,
            self.times,
            self.outcome,
            self.lost,
            self.out_of,
            self.duplicated
        );
        std::fs::write(dir.join(format!("{}.row", self.scenario)), row).unwrap();
    }
}
