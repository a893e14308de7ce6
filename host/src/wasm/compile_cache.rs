//! A directory of precompiled components, keyed by the module's sha256 and
//! the engine's compatibility key, so each module is compiled once per
//! machine and later loads are a ~100 µs deserialisation.
//!
//! Guarantees: an entry is written atomically (temp file + rename), so a
//! reader never sees half a file; an entry that fails to load is recompiled
//! and replaced; only files this cache wrote are ever deserialised.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::component::Component;

use super::engine::WasmEngine;

/// Where compiled artifacts live.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache { dir: dir.into() }
    }

    /// The default location: `$LOGSTREAM_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/logstream`, else `~/.cache/logstream`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("LOGSTREAM_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(dir).join("logstream"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/logstream"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, engine: &WasmEngine, sha256_hex: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256_hex}-{}.cwasm", engine.compatibility_key()))
    }

    /// Load the compiled component for `bytes` (whose sha256 is given),
    /// compiling and storing it on a miss. `bytes` must already be known to
    /// be a component.
    pub fn load_or_compile(
        &self,
        engine: &WasmEngine,
        sha256_hex: &str,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome)> {
        let path = self.entry_path(engine, sha256_hex);
        if path.exists() {
            // SAFETY: `deserialize_file` trusts its input to be a wasmtime
            // artifact. Files in this directory are only written by
            // `store` below, from `Component::serialize` of the same engine
            // configuration (the compatibility key is in the name), and
            // wasmtime still checks the header and version before use.
            match unsafe { Component::deserialize_file(engine.engine(), &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                // The artifact is sound; this engine's limits refuse the
                // component, and compiling it again would be refused the
                // same way.
                Err(error)
                    if super::module::initial_memory_over_limit(&format!("{error:#}"))
                        .is_some() =>
                {
                    return Err(error.into())
                }
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    "compiled artifact does not load, recompiling: {error:#}"
                ),
            }
        }
        let component = Component::new(engine.engine(), bytes)?;
        if let Err(error) = self.store(&path, &component) {
            // The cache is an optimisation: a read-only or full disk must
            // not stop the processor from running.
            tracing::warn!(path = %path.display(), "could not cache compiled component: {error:#}");
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, component: &Component) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let artifact = component.serialize()?;
        let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::io::Write::write_all(&mut temp, &artifact)?;
        temp.persist(path)?;
        Ok(())
    }
}

/// Whether a load found a compiled artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Compiled,
}
