//! Rows of `docs/reliability.md`. Each reliability scenario (in any test
//! file) records one row before it asserts, so a failing scenario is
//! reported too; `scripts/reliability-table.sh` runs the suites and
//! assembles the rows into the table.

use std::collections::HashSet;
use std::hash::Hash;
use std::path::{Path, PathBuf};

/// What a run produced against what an uninterrupted run produced: items
/// (outputs, dead letters) lost, duplicated and unexpected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Items expected.
    pub out_of: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unexpected: usize,
}

impl Counts {
    /// Compare `got` with `want`, as multisets of items.
    pub fn of<T: Eq + Hash>(want: &[T], got: &[T]) -> Counts {
        let distinct: HashSet<&T> = got.iter().collect();
        let wanted: HashSet<&T> = want.iter().collect();
        Counts {
            out_of: want.len(),
            lost: want.iter().filter(|i| !distinct.contains(i)).count(),
            duplicated: got.len() - distinct.len(),
            unexpected: distinct.iter().filter(|i| !wanted.contains(*i)).count(),
        }
    }

    /// Add another comparison (of another partition, say).
    pub fn add(&mut self, other: Counts) {
        self.out_of += other.out_of;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.unexpected += other.unexpected;
    }

    /// Nothing lost, duplicated or unexpected.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unexpected == 0
    }

    /// Write the row of a scenario whose outputs compared as `self`:
    /// `outcome` when nothing was lost, duplicated or unexpected, what
    /// differs otherwise.
    pub fn write_row(&self, scenario: &str, injected: &str, times: usize, outcome: &str) {
        let differs = format!("DIFFERS: {}", self.describe());
        Row {
            scenario,
            injected,
            times,
            outcome: if self.clean() { outcome } else { &differs },
            lost: self.lost,
            out_of: self.out_of,
            duplicated: self.duplicated,
        }
        .write();
    }

    pub fn describe(&self) -> String {
        format!(
            "{} of {} lost, {} duplicated, {} unexpected",
            self.lost, self.out_of, self.duplicated, self.unexpected
        )
    }
}

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
