//! The identity of a unit — one deployed processor on one input partition —
//! and every name derived from it. A unit's name, its store name, its Kafka
//! transactional id and the ids of its outputs and dead letters are all
//! formatted (and parsed) here and nowhere else.
//!
//! | name | format | used for |
//! |---|---|---|
//! | unit name | `PROCESSOR/PARTITION` | logs, status, the election and checkpoint keys (`store::keys::unit`) |
//! | transactional id | `logstream/DEPLOYMENT/PROCESSOR/PARTITION/GEN` | the fenced producer's Kafka identity; `GEN` moves on when its producer epochs run out |
//! | output id | `DEPLOYMENT/PROCESSOR/PARTITION/OFFSET/INDEX` | `logstream-id` header of an output: the `INDEX`th output of input record `OFFSET` |
//! | dead-letter id | `DEPLOYMENT/PROCESSOR/PARTITION/OFFSET/dlq` | `logstream-id` header of a dead letter |
//!
//! The *deployment* ([`Deployment`]) is the name of one coordination store's
//! set of hosts (`store::deployment`); it is part of every id that reaches
//! the broker, so two deployments sharing a broker never fence each
//! other's producers nor suppress each other's outputs.
//!
//! Guarantee: names of different units differ, and so do their ids: a
//! processor or deployment name never contains `/` (both are validated to
//! `a-z 0-9 . _ -`), so an id splits back into its parts unambiguously
//! ([`OutputId::parse`]).

use std::fmt;

/// Longest deployment name, in characters.
pub const MAX_DEPLOYMENT_CHARS: usize = 64;

/// A unit: `processor` on input partition `partition`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId {
    processor: String,
    partition: i32,
}

impl UnitId {
    pub fn new(processor: &str, partition: i32) -> Self {
        UnitId {
            processor: processor.to_string(),
            partition,
        }
    }

    pub fn processor(&self) -> &str {
        &self.processor
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// `PROCESSOR/PARTITION`: what logs, status and the store call it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.processor, self.partition)
    }

    /// The unit a name of [`UnitId::name`]'s form stands for.
    pub fn parse_name(name: &str) -> Option<UnitId> {
        let (processor, partition) = name.rsplit_once('/')?;
        if processor.is_empty() || processor.contains('/') {
            return None;
        }
        Some(UnitId::new(processor, partition.parse().ok()?))
    }

    /// The Kafka transactional id the unit's producer uses in
    /// `deployment`, at producer generation `generation` (see
    /// `pipeline::fenced` for when it moves on).
    pub fn transactional_id(&self, deployment: &Deployment, generation: u32) -> String {
        format!("logstream/{}/{generation}", self.id_root(deployment))
    }

    /// What every output and dead-letter id of the unit starts with
    /// (`DEPLOYMENT/PROCESSOR/PARTITION/`).
    pub fn id_prefix(&self, deployment: &Deployment) -> String {
        format!("{}/", self.id_root(deployment))
    }

    /// The id of the `index`th output of input record `offset`.
    pub fn output_id(&self, deployment: &Deployment, offset: i64, index: u32) -> String {
        format!("{}/{offset}/{index}", self.id_root(deployment))
    }

    /// The id of the dead letter of input record `offset`.
    pub fn dead_letter_id(&self, deployment: &Deployment, offset: i64) -> String {
        format!("{}/{offset}/{DEAD_LETTER_SLOT}", self.id_root(deployment))
    }

    /// The input offset an output or dead-letter id of the unit was made
    /// for (`None`: not one of the unit's ids in `deployment`).
    pub fn input_offset_of(&self, deployment: &Deployment, id: &str) -> Option<i64> {
        let rest = id.strip_prefix(&self.id_prefix(deployment))?;
        let (offset, _slot) = rest.split_once('/')?;
        offset.parse().ok()
    }

    fn id_root(&self, deployment: &Deployment) -> String {
        format!("{}/{}/{}", deployment.0, self.processor, self.partition)
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.processor, self.partition)
    }
}

/// The last part of a dead letter's id.
const DEAD_LETTER_SLOT: &str = "dlq";

/// The name of a deployment: the hosts, processors and units of one
/// coordination store. Validated: 1 to [`MAX_DEPLOYMENT_CHARS`] characters
/// of `a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Deployment(String);

impl Deployment {
    /// A deployment name, or one sentence on why `name` cannot be one.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.chars().count() > MAX_DEPLOYMENT_CHARS {
            return Err(format!(
                "the deployment name {name:?} must be 1 to {MAX_DEPLOYMENT_CHARS} characters"
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
        {
            return Err(format!(
                "the deployment name {name:?} contains {bad:?}; use a-z, 0-9, '.', '_' and '-'"
            ));
        }
        Ok(Deployment(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an output or dead-letter id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputId {
    pub deployment: String,
    pub unit: UnitId,
    /// The input record's offset.
    pub offset: i64,
    /// Which output of that record; `None` for its dead letter.
    pub index: Option<u32>,
}

impl OutputId {
    /// Split an id of [`UnitId::output_id`]'s or
    /// [`UnitId::dead_letter_id`]'s form.
    pub fn parse(id: &str) -> Option<OutputId> {
        let mut parts = id.split('/');
        let deployment = parts.next()?;
        let processor = parts.next()?;
        let partition = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let index = match parts.next()? {
            DEAD_LETTER_SLOT => None,
            index => Some(index.parse().ok()?),
        };
        if parts.next().is_some() || deployment.is_empty() || processor.is_empty() {
            return None;
        }
        Some(OutputId {
            deployment: deployment.to_string(),
            unit: UnitId::new(processor, partition),
            offset,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Deployment {
        Deployment::new("prod-eu").unwrap()
    }

    #[test]
    fn ids_give_back_their_input_offsets() {
        let unit = UnitId::new("lc", 2);
        let d = deployment();
        assert_eq!(
            unit.input_offset_of(&d, &unit.output_id(&d, 17, 3)),
            Some(17)
        );
        assert_eq!(
            unit.input_offset_of(&d, &unit.dead_letter_id(&d, 9)),
            Some(9)
        );
        let other = UnitId::new("lc", 3);
        assert_eq!(unit.input_offset_of(&d, &other.output_id(&d, 17, 0)), None);
        assert_eq!(unit.input_offset_of(&d, "garbage"), None);
    }

    #[test]
    fn names_and_ids_have_their_documented_forms() {
        let unit = UnitId::new("lc", 2);
        let d = deployment();
        assert_eq!(unit.name(), "lc/2");
        assert_eq!(unit.to_string(), "lc/2");
        assert_eq!(unit.transactional_id(&d, 0), "logstream/prod-eu/lc/2/0");
        assert_eq!(unit.output_id(&d, 17, 3), "prod-eu/lc/2/17/3");
        assert_eq!(unit.dead_letter_id(&d, 17), "prod-eu/lc/2/17/dlq");
        assert!(unit.output_id(&d, 17, 3).starts_with(&unit.id_prefix(&d)));
    }

    #[test]
    fn ids_parse_back_into_their_parts() {
        let unit = UnitId::new("lc", 2);
        let d = deployment();
        assert_eq!(
            OutputId::parse(&unit.output_id(&d, 17, 3)),
            Some(OutputId {
                deployment: "prod-eu".into(),
                unit: unit.clone(),
                offset: 17,
                index: Some(3),
            })
        );
        assert_eq!(
            OutputId::parse(&unit.dead_letter_id(&d, 9)).map(|id| id.index),
            Some(None)
        );
        for bad in [
            "",
            "a/b/c/d",
            "d/p/x/1/0",
            "d/p/0/1/0/extra",
            "/p/0/1/0",
            "d/p/0/1/x",
        ] {
            assert_eq!(OutputId::parse(bad), None, "{bad}");
        }
        assert_eq!(UnitId::parse_name("lc/2"), Some(unit));
        assert_eq!(UnitId::parse_name("lc"), None);
        assert_eq!(UnitId::parse_name("/2"), None);
    }

    #[test]
    fn a_prefix_never_matches_another_units_ids() {
        let d = deployment();
        let one = UnitId::new("lc", 1);
        let eleven = UnitId::new("lc", 11);
        assert!(!eleven.output_id(&d, 0, 0).starts_with(&one.id_prefix(&d)));
        let other = Deployment::new("prod").unwrap();
        assert!(!one.output_id(&d, 0, 0).starts_with(&one.id_prefix(&other)));
    }

    #[test]
    fn deployment_names_are_validated() {
        assert!(Deployment::new("a.b_c-1").is_ok());
        for bad in ["", "A", "a/b", "a b", &"x".repeat(MAX_DEPLOYMENT_CHARS + 1)] {
            assert!(Deployment::new(bad).is_err(), "{bad}");
        }
    }
}
