//! The key layout of the coordination store, in FoundationDB's tuple
//! encoding (so keys sort by their parts, and the same layout works on
//! every backend; the FoundationDB backend adds its directory prefix).
//!
//! | key | value |
//! |---|---|
//! | `("proc", NAME, "leader")` | the processor's leader record (election) |
//! | `("proc", NAME, "ckpt", "current")` | pointer to the current checkpoint generation |
//! | `("proc", NAME, "ckpt", "gen", GEN, …)` | one checkpoint generation: metadata and chunks |
//! | `("proc", NAME, "spec")` | the deployed processor spec |
//! | `("module", SHA256, …)` | module bytes, content-addressed, chunked |
//! | `("registry", "version")` | change counter of specs (hosts poll it) |
//! | `("host", HOST_ID)` | host membership record |

use foundationdb_tuple::{pack, Subspace};

/// The subspace of everything about one processor.
pub fn processor(name: &str) -> Subspace {
    Subspace::from(("proc", name))
}

/// The leader record of a processor.
pub fn leader(name: &str) -> Vec<u8> {
    processor(name).pack(&"leader")
}

/// The subspace of a processor's checkpoints.
pub fn checkpoints(name: &str) -> Subspace {
    processor(name).subspace(&"ckpt")
}

/// The deployed spec of a processor.
pub fn spec(name: &str) -> Vec<u8> {
    processor(name).pack(&"spec")
}

/// The subspace of all processors (to list them).
pub fn processors() -> Subspace {
    Subspace::from("proc")
}

/// The subspace of one stored module.
pub fn module(sha256_hex: &str) -> Subspace {
    Subspace::from(("module", sha256_hex))
}

/// The registry's change counter.
pub fn registry_version() -> Vec<u8> {
    pack(&("registry", "version"))
}

/// The subspace of host membership records.
pub fn hosts() -> Subspace {
    Subspace::from("host")
}

/// One host's membership record.
pub fn host(host_id: &str) -> Vec<u8> {
    hosts().pack(&host_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_processor_share_its_prefix_and_not_anothers() {
        let a = processor("a");
        assert!(leader("a").starts_with(a.bytes()));
        assert!(spec("a").starts_with(a.bytes()));
        assert!(!leader("ab").starts_with(a.bytes()));
        assert!(checkpoints("a").bytes().starts_with(a.bytes()));
    }
}
