//! Closed sets of names from the field, as enums: the splits of a dataset and the
//! identities of the two tasks (drug identification, MoA recognition).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is not one of a closed set, with the names that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}: expected {expected}")]
pub struct UnknownName {
    /// What kind of name it was meant to be (`split`, `identity`).
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The names accepted, for the message.
    pub expected: String,
}

/// Which part of a dataset a video belongs to (MitoReID's protocol, docs/method.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Videos the model is trained on.
    Train,
    /// Videos ranked against the gallery.
    Query,
    /// Videos the queries are ranked against; they also stand for the known MoAs.
    Gallery,
    /// Videos of drugs never trained on (`novel/`).
    Novel,
    /// Videos without labels, to be named by `predict`.
    Unlabelled,
}

impl Split {
    /// The splits of a replicate folder (`l1/train`, `l1/query`, `l1/gallery`).
    pub const REPLICATE: [Split; 3] = [Split::Train, Split::Query, Split::Gallery];
    /// The splits an evaluation metadata file may name.
    pub const LABELLED: [Split; 4] = [Split::Query, Split::Gallery, Split::Novel, Split::Train];

    /// The split's name, as folders and files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Query => "query",
            Split::Gallery => "gallery",
            Split::Novel => "novel",
            Split::Unlabelled => "unlabelled",
        }
    }

    /// Parses one of `accepted` by name; the error lists them.
    pub fn parse_among(name: &str, accepted: &[Split]) -> Result<Split, UnknownName> {
        accepted.iter().copied().find(|s| s.name() == name).ok_or_else(|| UnknownName {
            what: "split",
            name: name.to_string(),
            expected: accepted.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        })
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Split {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::parse_among(s, &[Split::Train, Split::Query, Split::Gallery, Split::Novel, Split::Unlabelled])
    }
}

/// Whether `name` is a replicate folder's: `l` and digits (`l1`, `l2`, ...).
pub fn is_replicate_folder(name: &str) -> bool {
    name.strip_prefix('l').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The identity a model learns in a training stage, and the task it is scored on: the drug
/// (drug identification) or its mechanism of action (MoA recognition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    /// The drug a cell was treated with.
    Drug,
    /// The drug's mechanism of action.
    Moa,
}

impl Identity {
    /// Both, in the order of the protocol's tables.
    pub const ALL: [Identity; 2] = [Identity::Drug, Identity::Moa];

    /// The identity's name, as configs and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Identity::Drug => "drug",
            Identity::Moa => "moa",
        }
    }

    /// Its classes, counted in a sentence ("11 drugs", "6 MoAs").
    pub fn plural(self) -> &'static str {
        match self {
            Identity::Drug => "drugs",
            Identity::Moa => "MoAs",
        }
    }

    /// The task scored on this identity, for tables.
    pub fn task(self) -> &'static str {
        match self {
            Identity::Drug => "drug identification",
            Identity::Moa => "MoA recognition",
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Identity {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| UnknownName {
            what: "identity",
            name: s.to_string(),
            expected: "drug, moa".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for s in [Split::Train, Split::Query, Split::Gallery, Split::Novel, Split::Unlabelled] {
            assert_eq!(s.name().parse::<Split>().unwrap(), s);
        }
        for i in Identity::ALL {
            assert_eq!(i.to_string().parse::<Identity>().unwrap(), i);
        }
        let e = Split::parse_among("unlabelled", &Split::LABELLED).unwrap_err().to_string();
        assert_eq!(e, "unknown split \"unlabelled\": expected query, gallery, novel, train");
        assert!("cell".parse::<Identity>().unwrap_err().to_string().contains("drug, moa"));
    }
}
