//! The molecular graph a GNN reads: per-atom and per-bond features in RDKit's
//! atom and bond order, and their encoding into integer indices for embedding
//! tables (OGB style).

use serde::ser::SerializeTuple;
use serde::{Serialize, Serializer};

/// RDKit's `HybridizationType`, spelled as RDKit prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hybridization {
    /// Not set.
    Unspecified,
    /// s.
    S,
    /// sp.
    Sp,
    /// sp2.
    Sp2,
    /// sp3.
    Sp3,
    /// sp3d.
    Sp3d,
    /// sp3d2.
    Sp3d2,
    /// sp2d.
    Sp2d,
}

impl Hybridization {
    /// RDKit's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "UNSPECIFIED",
            Self::S => "S",
            Self::Sp => "SP",
            Self::Sp2 => "SP2",
            Self::Sp3 => "SP3",
            Self::Sp3d => "SP3D",
            Self::Sp3d2 => "SP3D2",
            Self::Sp2d => "SP2D",
        }
    }
}

/// RDKit's `ChiralType`, spelled as RDKit prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChiralTag {
    /// No chirality.
    Unspecified,
    /// Tetrahedral, clockwise (`@@`).
    TetrahedralCw,
    /// Tetrahedral, counter-clockwise (`@`).
    TetrahedralCcw,
    /// Another kind.
    Other,
    /// Square planar.
    SquarePlanar,
    /// Trigonal bipyramidal.
    TrigonalBipyramidal,
    /// Octahedral.
    Octahedral,
}

impl ChiralTag {
    /// RDKit's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "CHI_UNSPECIFIED",
            Self::TetrahedralCw => "CHI_TETRAHEDRAL_CW",
            Self::TetrahedralCcw => "CHI_TETRAHEDRAL_CCW",
            Self::Other => "CHI_OTHER",
            Self::SquarePlanar => "CHI_SQUAREPLANAR",
            Self::TrigonalBipyramidal => "CHI_TRIGONALBIPYRAMIDAL",
            Self::Octahedral => "CHI_OCTAHEDRAL",
        }
    }
}

/// RDKit's `BondType` (the kinds a SMILES can produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BondType {
    /// Single.
    Single,
    /// Double.
    Double,
    /// Triple.
    Triple,
    /// Quadruple.
    Quadruple,
    /// Aromatic.
    Aromatic,
    /// Dative.
    Dative,
}

impl BondType {
    /// RDKit's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "SINGLE",
            Self::Double => "DOUBLE",
            Self::Triple => "TRIPLE",
            Self::Quadruple => "QUADRUPLE",
            Self::Aromatic => "AROMATIC",
            Self::Dative => "DATIVE",
        }
    }
}

/// RDKit's `BondStereo` as legacy stereo perception assigns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BondStereo {
    /// No stereo.
    None,
    /// Unspecified double-bond stereo.
    Any,
    /// Z.
    Z,
    /// E.
    E,
}

impl BondStereo {
    /// RDKit's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "STEREONONE",
            Self::Any => "STEREOANY",
            Self::Z => "STEREOZ",
            Self::E => "STEREOE",
        }
    }
}

/// One atom: `[atomic_num, degree, formal_charge, total_H, aromatic,
/// hybridization, in_ring, chiral_tag]`, as RDKit's `Atom` getters return
/// them after `MolFromSmiles` (hydrogens removed, sanitised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AtomFeatures {
    /// Atomic number.
    pub atomic_num: u32,
    /// Explicit heavy-atom neighbours (`GetDegree`).
    pub degree: u32,
    /// Formal charge.
    pub formal_charge: i32,
    /// Implicit plus explicit hydrogens (`GetTotalNumHs`).
    pub total_h: u32,
    /// In an aromatic ring.
    pub aromatic: bool,
    /// Hybridisation.
    pub hybridization: Hybridization,
    /// In a ring.
    pub in_ring: bool,
    /// Tetrahedral chirality.
    pub chiral_tag: ChiralTag,
}

/// One bond: `[begin, end, type, conjugated, in_ring, stereo]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BondFeatures {
    /// First atom's index.
    pub begin: usize,
    /// Second atom's index.
    pub end: usize,
    /// Bond order.
    pub bond_type: BondType,
    /// Conjugated.
    pub conjugated: bool,
    /// In a ring.
    pub in_ring: bool,
    /// Double-bond stereo.
    pub stereo: BondStereo,
}

/// A molecular graph in RDKit's atom and bond order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Graph {
    /// Atoms, in input order.
    pub atoms: Vec<AtomFeatures>,
    /// Bonds, in input order.
    pub bonds: Vec<BondFeatures>,
}

/// Vocabulary size of each column of [`AtomFeatures::encode`]: atomic number
/// 1..=118 (+ misc), degree 0..=10 (+ misc), formal charge -5..=5 (+ misc),
/// hydrogens 0..=8 (+ misc), aromatic, hybridization (SP, SP2, SP3, SP3D,
/// SP3D2, misc), in ring, chirality (unspecified, CW, CCW, other).
pub const ATOM_FEATURE_DIMS: [usize; 8] = [119, 12, 12, 10, 2, 6, 2, 4];

/// Vocabulary size of each column of [`BondFeatures::encode`]: bond type
/// (single, double, triple, aromatic, misc), conjugated, in ring, stereo
/// (none, Z, E, any).
pub const BOND_FEATURE_DIMS: [usize; 4] = [5, 2, 2, 4];

fn capped(value: i64, lo: i64, hi: i64) -> usize {
    if (lo..=hi).contains(&value) {
        (value - lo) as usize
    } else {
        (hi - lo + 1) as usize
    }
}

impl AtomFeatures {
    /// Integer index per column, each below the matching [`ATOM_FEATURE_DIMS`]
    /// entry; out-of-range values go to the column's last ("misc") slot.
    pub fn encode(&self) -> [usize; 8] {
        [
            capped(self.atomic_num as i64, 1, 118),
            capped(self.degree as i64, 0, 10),
            capped(self.formal_charge as i64, -5, 5),
            capped(self.total_h as i64, 0, 8),
            self.aromatic as usize,
            match self.hybridization {
                Hybridization::Sp => 0,
                Hybridization::Sp2 => 1,
                Hybridization::Sp3 => 2,
                Hybridization::Sp3d => 3,
                Hybridization::Sp3d2 => 4,
                _ => 5,
            },
            self.in_ring as usize,
            match self.chiral_tag {
                ChiralTag::Unspecified => 0,
                ChiralTag::TetrahedralCw => 1,
                ChiralTag::TetrahedralCcw => 2,
                _ => 3,
            },
        ]
    }
}

impl BondFeatures {
    /// Integer index per column, each below the matching [`BOND_FEATURE_DIMS`].
    pub fn encode(&self) -> [usize; 4] {
        [
            match self.bond_type {
                BondType::Single => 0,
                BondType::Double => 1,
                BondType::Triple => 2,
                BondType::Aromatic => 3,
                _ => 4,
            },
            self.conjugated as usize,
            self.in_ring as usize,
            match self.stereo {
                BondStereo::None => 0,
                BondStereo::Z => 1,
                BondStereo::E => 2,
                BondStereo::Any => 3,
            },
        ]
    }
}

impl Graph {
    /// Directed edge list (both directions per bond, bond order kept), the
    /// shape message passing consumes.
    pub fn edge_index(&self) -> Vec<[usize; 2]> {
        self.bonds.iter().flat_map(|b| [[b.begin, b.end], [b.end, b.begin]]).collect()
    }

    /// Connected components as sorted atom index lists, in order of their
    /// lowest atom.
    pub fn fragments(&self) -> Vec<Vec<usize>> {
        let n = self.atoms.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        for b in &self.bonds {
            let (a, c) = (find(&mut parent, b.begin), find(&mut parent, b.end));
            if a != c {
                parent[a.max(c)] = a.min(c);
            }
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut root_to_group = vec![usize::MAX; n];
        for atom in 0..n {
            let root = find(&mut parent, atom);
            if root_to_group[root] == usize::MAX {
                root_to_group[root] = groups.len();
                groups.push(Vec::new());
            }
            groups[root_to_group[root]].push(atom);
        }
        groups
    }
}

// The JSON shape of `rdkit_oracle.jsonl`: each atom and bond a flat array.
impl Serialize for AtomFeatures {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(8)?;
        t.serialize_element(&self.atomic_num)?;
        t.serialize_element(&self.degree)?;
        t.serialize_element(&self.formal_charge)?;
        t.serialize_element(&self.total_h)?;
        t.serialize_element(&(self.aromatic as u8))?;
        t.serialize_element(self.hybridization.name())?;
        t.serialize_element(&(self.in_ring as u8))?;
        t.serialize_element(self.chiral_tag.name())?;
        t.end()
    }
}

impl Serialize for BondFeatures {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(6)?;
        t.serialize_element(&self.begin)?;
        t.serialize_element(&self.end)?;
        t.serialize_element(self.bond_type.name())?;
        t.serialize_element(&(self.conjugated as u8))?;
        t.serialize_element(&(self.in_ring as u8))?;
        t.serialize_element(self.stereo.name())?;
        t.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_stay_inside_their_vocabularies() {
        let atom = AtomFeatures {
            atomic_num: 200,
            degree: 40,
            formal_charge: -9,
            total_h: 12,
            aromatic: true,
            hybridization: Hybridization::Unspecified,
            in_ring: true,
            chiral_tag: ChiralTag::Octahedral,
        };
        for (value, dim) in atom.encode().iter().zip(ATOM_FEATURE_DIMS) {
            assert!(*value < dim, "{value} >= {dim}");
        }
        assert_eq!(atom.encode(), [118, 11, 11, 9, 1, 5, 1, 3]);
        let carbon = AtomFeatures {
            atomic_num: 6,
            degree: 2,
            formal_charge: 0,
            total_h: 2,
            aromatic: false,
            hybridization: Hybridization::Sp3,
            in_ring: false,
            chiral_tag: ChiralTag::Unspecified,
        };
        assert_eq!(carbon.encode(), [5, 2, 5, 2, 0, 2, 0, 0]);
    }

    #[test]
    fn fragments_are_connected_components() {
        let atom = AtomFeatures {
            atomic_num: 6,
            degree: 0,
            formal_charge: 0,
            total_h: 0,
            aromatic: false,
            hybridization: Hybridization::Sp3,
            in_ring: false,
            chiral_tag: ChiralTag::Unspecified,
        };
        let bond = |begin, end| BondFeatures {
            begin,
            end,
            bond_type: BondType::Single,
            conjugated: false,
            in_ring: false,
            stereo: BondStereo::None,
        };
        let g = Graph { atoms: vec![atom; 5], bonds: vec![bond(0, 3), bond(1, 4)] };
        assert_eq!(g.fragments(), vec![vec![0, 3], vec![1, 4], vec![2]]);
        assert_eq!(g.edge_index(), vec![[0, 3], [3, 0], [1, 4], [4, 1]]);
    }
}
