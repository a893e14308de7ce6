//! The key layout of the coordination store, in FoundationDB's tuple
//! encoding (so keys sort by their parts, and the same layout works on
//! every backend; the FoundationDB backend adds its directory prefix).
//!
//! | key | value |
//! |---|---|
//! | `("meta", "deployment")` | the deployment's name (`store::deployment`) |
//! | `("unit", UNIT, "leader")` | a unit's leader record: epoch, holder, release, step-down request, preferred host (election); written only by claims, releases, step-down requests and preferred-host changes — the key every fenced write reads |
//! | `("unit", UNIT, "renewal")` | the heartbeat of the leader record's epoch: `{epoch, renewal, lease_ms}` (election); rewritten every heartbeat, read by the election only, never by fenced writes |
//! | `("unit", UNIT, "ckpt", "current")` | pointer to the current checkpoint generation |
//! | `("unit", UNIT, "ckpt", "gen", GEN, …)` | one checkpoint generation: metadata and chunks |
//! | `("unit", UNIT, "producer")` | the unit's producer generation (`pipeline::fenced`) |
//! | `("proc", NAME, "spec")` | the deployed processor spec |
//! | `("module", SHA256, …)` | module bytes, content-addressed, chunked |
//! | `("registry", "version")` | change counter of specs (hosts poll it) |
//! | `("host", HOST_ID)` | host membership record |
//!
//! `UNIT` is a unit's name, `PROCESSOR/PARTITION` ([`crate::unit_id`]):
//! what is elected and checkpointed. Processors (specs) and units live in
//! separate subspaces, so listing either never walks the other.

use foundationdb_tuple::{pack, Subspace};

/// The subspace of everything about one processor's deployment.
pub fn processor(name: &str) -> Subspace {
    Subspace::from(("proc", name))
}

/// The subspace of all units (to list them).
pub fn units() -> Subspace {
    Subspace::from("unit")
}

/// The subspace of everything about one unit (what is elected and
/// checkpointed, by name).
pub fn unit(name: &str) -> Subspace {
    units().subspace(&name)
}

/// The leader record of a unit: what fenced writes read, so it changes
/// only when leadership does (never on a heartbeat).
pub fn leader(name: &str) -> Vec<u8> {
    unit(name).pack(&"leader")
}

/// The renewal record of a unit: the leader's heartbeat, kept apart from
/// [`leader`] so a renewal never conflicts with a fenced write.
pub fn renewal(name: &str) -> Vec<u8> {
    unit(name).pack(&"renewal")
}

/// The subspace of a unit's checkpoints.
pub fn checkpoints(name: &str) -> Subspace {
    unit(name).subspace(&"ckpt")
}

/// A unit's producer generation.
pub fn producer(name: &str) -> Vec<u8> {
    unit(name).pack(&"producer")
}

/// The deployment's name.
pub fn deployment() -> Vec<u8> {
    pack(&("meta", "deployment"))
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
    fn keys_of_one_unit_share_its_prefix_and_not_anothers() {
        let a = unit("a/1");
        assert!(leader("a/1").starts_with(a.bytes()));
        assert!(renewal("a/1").starts_with(a.bytes()));
        assert_ne!(renewal("a/1"), leader("a/1"));
        assert!(!checkpoints("a/1").is_start_of(&renewal("a/1")));
        assert!(checkpoints("a/1").bytes().starts_with(a.bytes()));
        assert!(producer("a/1").starts_with(a.bytes()));
        assert!(!leader("a/11").starts_with(a.bytes()));
        assert!(!spec("a").starts_with(units().bytes()));
        assert!(!leader("a/1").starts_with(processors().bytes()));
    }
}
