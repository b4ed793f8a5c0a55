//! Parsing and sanitisation: a SMILES string becomes a [`Molecule`] the way
//! RDKit's `Chem.MolFromSmiles` sees it.

use chematic_smiles as cs;
use serde::{Deserialize, Serialize};

use crate::error::ChemError;
use crate::fingerprint::{Fingerprint, FingerprintConfig};
use crate::graph::{AtomFeatures, BondFeatures, BondStereo, BondType, ChiralTag, Graph, Hybridization};

/// What to encode when the SMILES holds several disconnected pieces (salts,
/// counter-ions, hydrates, co-crystals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FragmentPolicy {
    /// The largest organic fragment (RDKit's `LargestFragmentChooser` with
    /// `preferOrganic`): most atoms counting hydrogens, then heavier, then by
    /// canonical SMILES. The encoders' default: a hydrochloride is its base.
    #[default]
    Largest,
    /// Every fragment, as written.
    Whole,
}

impl FragmentPolicy {
    /// The policy's name (`largest`, `whole`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Largest => "largest",
            Self::Whole => "whole",
        }
    }
}

impl std::str::FromStr for FragmentPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "largest" => Ok(Self::Largest),
            "whole" => Ok(Self::Whole),
            other => Err(format!("unknown fragment policy {other:?}: expected \"largest\" or \"whole\"")),
        }
    }
}

/// A sanitised molecule: its RDKit-order graph, canonical SMILES and the
/// chematic molecule the fingerprints are computed from.
#[derive(Clone)]
pub struct Molecule {
    input: String,
    inner: cs::parser::Molecule,
    graph: Graph,
    canonical: String,
    input_fragments: usize,
    policy: FragmentPolicy,
}

impl Molecule {
    /// Parse with the whole input kept ([`FragmentPolicy::Whole`]).
    pub fn parse(smiles: &str) -> Result<Self, ChemError> {
        Self::parse_with(smiles, FragmentPolicy::Whole)
    }

    /// Parse, then keep the fragment(s) the policy asks for. CXSMILES
    /// extensions after the first blank (`|...|`) are accepted and ignored, as
    /// they change neither the graph nor the canonical SMILES.
    pub fn parse_with(smiles: &str, policy: FragmentPolicy) -> Result<Self, ChemError> {
        let input = smiles.trim();
        let base = input.split(char::is_whitespace).next().unwrap_or("");
        if base.is_empty() {
            return Err(ChemError::Empty);
        }
        check_size(input, base)?;
        let whole = Self::sanitize(input, base)?;
        let input_fragments = whole.graph.fragments().len();
        if policy == FragmentPolicy::Whole || input_fragments == 1 {
            return Ok(Self { policy, input_fragments, ..whole });
        }
        let keep = whole.largest_organic_fragment()?;
        let params = cs::RdkitSmilesParams { canonical: false, ..Default::default() };
        let fragment_smiles = cs::rdkit_fragment_smiles(&whole.inner, &keep, None, &params)
            .map_err(|e| ChemError::Unsupported { smiles: input.into(), reason: e.to_string() })?;
        let fragment = Self::sanitize(input, &fragment_smiles)?;
        Ok(Self { policy, input_fragments, ..fragment })
    }

    fn sanitize(input: &str, base: &str) -> Result<Self, ChemError> {
        let parsed = cs::parse(base).map_err(|e| syntax_error(input, base, &e))?;
        let cx = input.get(base.len()..).map(str::trim).filter(|s| s.starts_with('|'));
        // RDKit drops explicit [H] atoms on read; chematic models that as a
        // separate hydrogen-suppressed molecule in RDKit's atom order.
        let suppressed = cs::rdkit_hydrogen_suppressed(&parsed);
        let hydrogens_removed = suppressed.is_some();
        let mut inner = suppressed.unwrap_or_else(|| parsed.clone());
        // CXSMILES ring double-bond marks (`c:`, `t:`), which RDKit applies over the
        // directional bonds and chematic does not read.
        let ring_marks = cx.map(cx_double_bond_marks).unwrap_or_default();
        if !ring_marks.is_empty() {
            inner = apply_ring_marks(&parsed, inner, hydrogens_removed, &ring_marks);
        }
        let view = cs::rdkit_mol_view(&inner).map_err(|e| match e {
            cs::RdkitSmilesError::Sanitization(reason) => ChemError::Sanitization {
                smiles: input.into(),
                // Atom numbers in the message are input atom numbers unless
                // hydrogens were removed first.
                position: (!hydrogens_removed)
                    .then(|| first_number(&reason))
                    .flatten()
                    .and_then(|atom| atom_positions(base).get(atom).copied()),
                reason,
            },
            cs::RdkitSmilesError::Unsupported(reason) => ChemError::Unsupported { smiles: input.into(), reason },
        })?;
        let canonical = cs::rdkit_canonical_smiles(&inner)
            .map_err(|e| ChemError::Unsupported { smiles: input.into(), reason: e.to_string() })?;
        let mut graph = graph_of(&view);
        if !hydrogens_removed {
            if let Some(cx) = cx {
                apply_cx_bond_marks(&mut graph, &view.chematic_bond, cx);
            }
        }
        Ok(Self { input: input.into(), inner, graph, canonical, input_fragments: 1, policy: FragmentPolicy::Whole })
    }

    fn largest_organic_fragment(&self) -> Result<Vec<usize>, ChemError> {
        let frags = self.graph.fragments();
        let params = cs::RdkitSmilesParams::default();
        // (organic, heavy atoms with their hydrogens, weight, reversed SMILES): the largest wins.
        type Rank = (bool, u32, u64, std::cmp::Reverse<String>);
        let mut best: Option<(Rank, Vec<usize>)> = None;
        for atoms in frags {
            let organic = atoms.iter().any(|&a| self.graph.atoms[a].atomic_num == 6);
            let n_atoms: u32 = atoms.iter().map(|&a| 1 + self.graph.atoms[a].total_h).sum();
            // Integer milli-daltons keep the ordering total.
            let mass: u64 = atoms
                .iter()
                .map(|&a| {
                    let at = &self.graph.atoms[a];
                    (average_mass(at.atomic_num) * 1000.0) as u64 + at.total_h as u64 * 1008
                })
                .sum();
            let smiles = cs::rdkit_fragment_smiles(&self.inner, &atoms, None, &params)
                .map_err(|e| ChemError::Unsupported { smiles: self.input.clone(), reason: e.to_string() })?;
            let key = (organic, n_atoms, mass, std::cmp::Reverse(smiles));
            if best.as_ref().is_none_or(|(k, _)| key > *k) {
                best = Some((key, atoms));
            }
        }
        Ok(best.map(|(_, a)| a).unwrap_or_default())
    }

    /// The SMILES as given (trimmed).
    pub fn input(&self) -> &str {
        &self.input
    }
    /// RDKit's canonical SMILES of the encoded molecule (after the fragment policy).
    pub fn canonical_smiles(&self) -> &str {
        &self.canonical
    }
    /// The molecular graph (of the kept fragments).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// Disconnected pieces in the input, before the fragment policy.
    pub fn input_fragments(&self) -> usize {
        self.input_fragments
    }
    /// Disconnected pieces in the encoded molecule.
    pub fn num_fragments(&self) -> usize {
        self.graph.fragments().len()
    }
    /// Whether the encoded molecule has a carbon atom. A salt such as `[Na+].[Cl-]` has no
    /// organic fragment to keep, and its encoding says little about a drug.
    pub fn is_organic(&self) -> bool {
        self.graph.atoms.iter().any(|a| a.atomic_num == 6)
    }
    /// Which fragments were kept.
    pub fn fragment_policy(&self) -> FragmentPolicy {
        self.policy
    }
    /// Morgan (ECFP-style) fingerprint, bit-identical to RDKit's Morgan generator.
    pub fn morgan(&self, config: &FingerprintConfig) -> Result<Fingerprint, ChemError> {
        Fingerprint::morgan(&self.inner, config)
    }
}

impl std::fmt::Debug for Molecule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Molecule")
            .field("input", &self.input)
            .field("canonical", &self.canonical)
            .field("atoms", &self.graph.atoms.len())
            .field("policy", &self.policy)
            .finish()
    }
}

/// The longest SMILES molclip parses (characters, CXSMILES extension included).
pub const MAX_SMILES_CHARS: usize = 20_000;
/// The most heavy atoms a SMILES may hold: drugs have tens, biologics written as SMILES a
/// few hundred; canonical ranking grows faster than linearly beyond.
pub const MAX_HEAVY_ATOMS: usize = 1_000;

/// Refuses, before parsing, an input over [`MAX_SMILES_CHARS`] or with more heavy atoms
/// than [`MAX_HEAVY_ATOMS`] (counted from the text: bracket atoms other than hydrogen, and
/// organic-subset symbols).
fn check_size(input: &str, base: &str) -> Result<(), ChemError> {
    let too_large = |reason: String| ChemError::TooLarge { smiles: input.into(), reason };
    let chars = input.chars().count();
    if chars > MAX_SMILES_CHARS {
        return Err(too_large(format!("{chars} characters, the limit is {MAX_SMILES_CHARS}")));
    }
    let heavy = heavy_atoms(base);
    if heavy > MAX_HEAVY_ATOMS {
        return Err(too_large(format!("{heavy} heavy atoms, the limit is {MAX_HEAVY_ATOMS}")));
    }
    Ok(())
}

/// Heavy atoms written in a SMILES, by a lexical pass.
fn heavy_atoms(smiles: &str) -> usize {
    let bytes = smiles.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                let end = bytes[i..].iter().position(|&b| b == b']').map_or(bytes.len(), |e| i + e);
                let inside = &smiles[i + 1..end];
                let symbol = inside.trim_start_matches(|c: char| c.is_ascii_digit());
                let hydrogen = symbol.starts_with('H') && !symbol[1..].starts_with(|c: char| c.is_ascii_lowercase());
                n += usize::from(!hydrogen);
                i = end + 1;
            }
            b'%' => i += 3,
            b'B' | b'C' | b'N' | b'O' | b'P' | b'S' | b'F' | b'I' | b'b' | b'c' | b'n' | b'o' | b'p' | b's' => {
                n += 1;
                // Cl and Br are one atom.
                let two = matches!(&bytes[i..], [b'C', b'l', ..] | [b'B', b'r', ..]);
                i += 1 + usize::from(two);
            }
            _ => i += 1,
        }
    }
    n
}

fn graph_of(view: &cs::RdkitMolView) -> Graph {
    let mut atom_in_ring = vec![false; view.atoms.len()];
    for ring in &view.atom_rings {
        for &a in ring {
            atom_in_ring[a] = true;
        }
    }
    let mut bond_in_ring = vec![false; view.bonds.len()];
    for ring in &view.bond_rings {
        for &b in ring {
            bond_in_ring[b] = true;
        }
    }
    let atoms = view
        .atoms
        .iter()
        .enumerate()
        .map(|(i, a)| AtomFeatures {
            atomic_num: a.atomic_num,
            degree: view.degree(i) as u32,
            formal_charge: a.formal_charge,
            total_h: a.total_num_hs,
            aromatic: a.is_aromatic,
            hybridization: match a.hybridization {
                1 => Hybridization::S,
                2 => Hybridization::Sp,
                3 => Hybridization::Sp2,
                4 => Hybridization::Sp3,
                5 => Hybridization::Sp3d,
                6 => Hybridization::Sp3d2,
                7 => Hybridization::Sp2d,
                _ => Hybridization::Unspecified,
            },
            in_ring: atom_in_ring[i],
            chiral_tag: match a.chiral_tag {
                0 => ChiralTag::Unspecified,
                1 => ChiralTag::TetrahedralCw,
                2 => ChiralTag::TetrahedralCcw,
                6 => ChiralTag::SquarePlanar,
                7 => ChiralTag::TrigonalBipyramidal,
                8 => ChiralTag::Octahedral,
                _ => ChiralTag::Other,
            },
        })
        .collect();
    let bonds = view
        .bonds
        .iter()
        .enumerate()
        .map(|(i, b)| BondFeatures {
            begin: b.begin,
            end: b.end,
            bond_type: match b.bond_type {
                2 => BondType::Double,
                3 => BondType::Triple,
                4 => BondType::Quadruple,
                12 => BondType::Aromatic,
                17 => BondType::Dative,
                _ => BondType::Single,
            },
            conjugated: b.is_conjugated,
            in_ring: bond_in_ring[i],
            stereo: match b.stereo {
                1 => BondStereo::Any,
                2 => BondStereo::Z,
                3 => BondStereo::E,
                _ => BondStereo::None,
            },
        })
        .collect();
    Graph { atoms, bonds }
}

/// RDKit reads two CXSMILES fields that change the graph it reports:
/// wedge and wavy marks (`wU`, `wD`, `w` as `atom.bond`) make the bond begin
/// at the marked atom, and a wavy bond leaves the double bonds beside it with
/// unknown geometry (`STEREOANY`). CX bond numbers count bonds in the order
/// the SMILES writes them, which is chematic's bond order.
fn apply_cx_bond_marks(graph: &mut Graph, chematic_bond: &[usize], cx: &str) {
    let mut marks: Vec<(bool, usize, usize)> = Vec::new();
    for (field, item) in cx_items(cx) {
        if !matches!(field.as_str(), "wU" | "wD" | "w") {
            continue;
        }
        if let Some((a, b)) = item.split_once('.') {
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                marks.push((field == "w", a, b));
            }
        }
    }
    for (wavy, atom, written) in marks {
        let Some(bond) = chematic_bond.iter().position(|&c| c == written) else { continue };
        let b = &mut graph.bonds[bond];
        if b.end == atom {
            std::mem::swap(&mut b.begin, &mut b.end);
        }
        if b.begin != atom || !wavy {
            continue;
        }
        let ends = [b.begin, b.end];
        for (i, other) in graph.bonds.iter_mut().enumerate() {
            let touches = ends.contains(&other.begin) || ends.contains(&other.end);
            if i != bond && touches && other.bond_type == BondType::Double && other.stereo == BondStereo::None {
                other.stereo = BondStereo::Any;
            }
        }
    }
}

/// The items of a CXSMILES extension (`|...|`), each with the field it belongs to:
/// `|wU:3.4,5.6,c:7|` gives (wU, 3.4), (wU, 5.6), (c, 7).
fn cx_items(cx: &str) -> Vec<(String, String)> {
    let body = cx.trim_start_matches('|');
    let body = &body[..body.find('|').unwrap_or(body.len())];
    // Coordinates `(x,y,z;...)` hold commas of their own.
    let mut flat = String::new();
    let mut depth = 0;
    for c in body.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => flat.push(c),
            _ => {}
        }
    }
    let mut field = String::new();
    let mut items = Vec::new();
    for token in flat.split(',') {
        let item = match token.split_once(':') {
            Some((name, rest)) if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '&') => {
                field = name.to_string();
                rest
            }
            _ => token,
        };
        items.push((field.clone(), item.to_string()));
    }
    items
}

/// CXSMILES ring double-bond marks: (trans, bond as written) for `t:` and `c:` (`ctu:`,
/// unknown geometry, is left to the directional bonds).
fn cx_double_bond_marks(cx: &str) -> Vec<(bool, usize)> {
    cx_items(cx)
        .into_iter()
        .filter(|(field, _)| field == "c" || field == "t")
        .filter_map(|(field, item)| Some((field == "t", item.parse().ok()?)))
        .collect()
}

/// Applies CXSMILES `c:`/`t:` marks the way RDKit does: the geometry is cis or trans
/// relative to the lowest-numbered neighbour of each double-bond atom, in the molecule as
/// written (explicit hydrogens included), and wins over directional bonds. Where the control
/// neighbour is a hydrogen that RDKit removes, the other neighbour stands for it, with the
/// geometry flipped. The mark is realised on `inner` (the molecule every feature is read
/// from) by setting the directions of the double bond's single bonds; where `inner` already
/// agrees, nothing changes.
fn apply_ring_marks(
    parsed: &cs::parser::Molecule,
    mut inner: cs::parser::Molecule,
    hydrogens_removed: bool,
    marks: &[(bool, usize)],
) -> cs::parser::Molecule {
    use chematic_core::{AtomIdx, BondIdx, BondOrder};
    // Input atom -> atom of `inner`.
    let map: Vec<Option<usize>> = if hydrogens_removed {
        let Some((_, kept)) =
            cs::rdkit_hydrogen_suppressed_with_map(parsed).filter(|(m, _)| m.atom_count() == inner.atom_count())
        else {
            return inner;
        };
        let mut map = vec![None; parsed.atom_count()];
        for (new, &old) in kept.iter().enumerate() {
            map[old] = Some(new);
        }
        map
    } else {
        (0..parsed.atom_count()).map(Some).collect()
    };
    let neighbours = |m: &cs::parser::Molecule, x: usize| -> Vec<(usize, usize)> {
        m.neighbors(AtomIdx(x as u32)).map(|(n, b)| (n.0 as usize, b.0 as usize)).collect()
    };
    for &(trans, written) in marks {
        if written >= parsed.bond_count() {
            continue;
        }
        let bond = parsed.bond(BondIdx(written as u32));
        if bond.order != BondOrder::Double {
            continue;
        }
        let (a, b) = (bond.atom1.0.min(bond.atom2.0) as usize, bond.atom1.0.max(bond.atom2.0) as usize);
        // The control neighbour of each end, as RDKit picks it, then as it stands in `inner`.
        let mut trans = trans;
        let mut control = |x: usize, partner: usize| -> Option<usize> {
            let others: Vec<usize> =
                neighbours(parsed, x).into_iter().map(|(n, _)| n).filter(|&n| n != partner).collect();
            let c = *others.iter().min()?;
            if map[c].is_some() {
                return map[c];
            }
            trans = !trans;
            others.iter().find(|&&n| n != c && map[n].is_some()).and_then(|&n| map[n])
        };
        let (Some(ca), Some(cb)) = (control(a, b), control(b, a)) else { continue };
        let (Some(a), Some(b)) = (map[a], map[b]) else { continue };
        // Which side of its double-bond atom `x` a neighbour sits on, from a directional bond
        // (`true`: above): `/` from atom1 to atom2 puts atom2 above atom1.
        let side_of = |m: &cs::parser::Molecule, bond: usize, x: usize| -> Option<bool> {
            let e = m.bond(BondIdx(bond as u32));
            let up = match e.order {
                BondOrder::Up => true,
                BondOrder::Down => false,
                _ => return None,
            };
            Some(if e.atom1.0 as usize == x { up } else { !up })
        };
        let side = |m: &cs::parser::Molecule, x: usize, partner: usize, c: usize| -> Option<bool> {
            let mut others: Vec<(usize, usize)> = neighbours(m, x).into_iter().filter(|&(n, _)| n != partner).collect();
            others.sort_by_key(|&(n, _)| n != c);
            others.iter().find_map(|&(n, bond)| side_of(m, bond, x).map(|s| if n == c { s } else { !s }))
        };
        let (sa, sb) = (side(&inner, a, b, ca), side(&inner, b, a, cb));
        if let (Some(x), Some(y)) = (sa, sb) {
            if (x != y) == trans {
                continue;
            }
        }
        // What an end allows: bonds of its own (to atoms in no other double bond) take any
        // direction; a bond to an atom of another double bond keeps that bond's geometry, so
        // its direction, when it has one or when the other bond's other bonds fix it, fixes
        // the end's side; a bond whose new direction would give another double bond a
        // geometry it lacks is left without one.
        let double_partner = |n: usize, x: usize| {
            neighbours(&inner, n)
                .into_iter()
                .find(|&(m, bond)| m != x && inner.bond(BondIdx(bond as u32)).order == BondOrder::Double)
        };
        let directional_except = |n: usize, skip: &[usize]| -> Option<(usize, bool)> {
            neighbours(&inner, n)
                .into_iter()
                .filter(|(m, _)| !skip.contains(m))
                .find_map(|(m, bond)| side_of(&inner, bond, n).map(|s| (m, s)))
        };
        // (the control's side where the end fixes it, or inconsistency; bonds to set, each
        // with the side its neighbour must take relative to the control's: same or opposite)
        struct End {
            fixed: Vec<bool>,
            set: Vec<(usize, usize, Option<bool>)>,
        }
        let end_of = |x: usize, partner: usize, c: usize| -> End {
            let mut end = End { fixed: Vec::new(), set: Vec::new() };
            for (n, bond) in neighbours(&inner, x).into_iter().filter(|&(n, _)| n != partner) {
                let e = inner.bond(BondIdx(bond as u32));
                let plain = matches!(e.order, BondOrder::Single | BondOrder::Up | BondOrder::Down)
                    && !inner.is_smiles_ring_closure(BondIdx(bond as u32));
                let own = side_of(&inner, bond, x);
                // The control's side that `n` at `side` implies.
                let control = |side: bool| if n == c { side } else { !side };
                match double_partner(n, x) {
                    None if plain => end.set.push((n, bond, None)),
                    None => end.fixed.extend(own.map(control)),
                    Some(_) if own.is_some() || !plain => end.fixed.extend(own.map(control)),
                    Some((y, _)) => match directional_except(n, &[x, y]) {
                        // `x` must sit opposite `z` at `n`, so `n` sits on `z`'s side of `x`.
                        Some((_, z_side)) => {
                            end.fixed.push(control(z_side));
                            end.set.push((n, bond, Some(z_side)));
                        }
                        None if directional_except(y, &[n]).is_none() => end.set.push((n, bond, None)),
                        None => {}
                    },
                }
            }
            end
        };
        let (end_a, end_b) = (end_of(a, b, ca), end_of(b, a, cb));
        let fixed = |e: &End| -> Result<Option<bool>, ()> {
            match e.fixed.first() {
                None => Ok(None),
                Some(&v) if e.fixed.iter().all(|&w| w == v) => Ok(Some(v)),
                Some(_) => Err(()),
            }
        };
        let (Ok(fa), Ok(fb)) = (fixed(&end_a), fixed(&end_b)) else { continue };
        let free = |e: &End, f: Option<bool>| f.is_none() && !e.set.is_empty();
        // The control's side at each end after the change, and which ends are set.
        // A fixed end keeps its side (its bonds are set to agree with it, forced ones
        // included); a free one takes the side the mark asks for.
        let (above_a, above_b) = match (fa, fb, free(&end_a, fa), free(&end_b, fb)) {
            (_, _, true, true) => {
                let above_a = sa.unwrap_or(true);
                (above_a, above_a != trans)
            }
            (Some(above_a), _, _, true) => (above_a, above_a != trans),
            (_, Some(above_b), true, _) => (above_b != trans, above_b),
            // Both fixed and agreeing: only forced bonds to write. Otherwise neither end can
            // take the geometry without changing another double bond's.
            (Some(x), Some(y), _, _) if (x != y) == trans => (x, y),
            _ => continue,
        };
        let plan = [(a, ca, above_a, &end_a), (b, cb, above_b, &end_b)];
        for (x, c, above_c, end) in plan {
            for &(n, bond, forced) in &end.set {
                let above = forced.unwrap_or(if n == c { above_c } else { !above_c });
                // `n` above `x`: Up when the bond runs from `x` to `n`, Down when from `n` to `x`.
                let from_x = inner.bond(BondIdx(bond as u32)).atom1.0 as usize == x;
                let order = if above == from_x { BondOrder::Up } else { BondOrder::Down };
                inner = inner.with_bond_order(BondIdx(bond as u32), order);
            }
        }
    }
    inner
}

fn syntax_error(input: &str, base: &str, e: &cs::SmilesError) -> ChemError {
    use cs::SmilesError as E;
    let byte = match e {
        E::UnexpectedEnd { pos }
        | E::UnknownElement { pos, .. }
        | E::UnmatchedExtendedRingClosure { pos, .. }
        | E::MismatchedParentheses { pos }
        | E::InvalidBracketAtom { pos, .. }
        | E::ConflictingRingBond { pos, .. }
        | E::ConflictingExtendedRingBond { pos, .. }
        | E::NestingTooDeep { pos }
        | E::UnexpectedCharacter { pos }
        | E::UnsupportedChiralityClass { pos, .. } => *pos,
        E::InvalidValence { atom, .. } => atom_positions(base).get(*atom).copied().unwrap_or(0),
        E::UnmatchedRingClosure { ring_num, .. } => ring_opening(base, &ring_num.to_string()).unwrap_or(base.len()),
        E::EmptyInput => 0,
        E::ResourceLimit { .. } => 0,
    };
    let position = base.get(..byte.min(base.len())).map_or(byte, |s| s.chars().count());
    // chematic's own text repeats the position; keep only the reason.
    let text = e.to_string();
    let reason = match text.find(" at position ") {
        Some(at) => {
            let rest = &text[at + " at position ".len()..];
            let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{}{}", &text[..at], rest)
        }
        None => text,
    };
    ChemError::Syntax { smiles: input.into(), position, reason }
}

/// Character position of each atom token, in input atom order.
fn atom_positions(smiles: &str) -> Vec<usize> {
    let chars: Vec<char> = smiles.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '[' => {
                out.push(i);
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            'B' | 'C' if matches!(chars.get(i + 1), Some('r') | Some('l')) => {
                out.push(i);
                i += 1;
            }
            'B' | 'C' | 'N' | 'O' | 'P' | 'S' | 'F' | 'I' | '*' | 'b' | 'c' | 'n' | 'o' | 'p' | 's' => out.push(i),
            '%' => i += 2,
            _ => {}
        }
        i += 1;
    }
    out
}

/// Byte offset of the ring-bond label `label` that is opened and never closed.
fn ring_opening(smiles: &str, label: &str) -> Option<usize> {
    let bytes = smiles.as_bytes();
    let mut open: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'%' => {
                let len = if bytes.get(i + 1) == Some(&b'(') { smiles[i..].find(')').map_or(1, |e| e + 1) } else { 3 };
                let end = (i + len).min(bytes.len());
                let text = smiles.get(i + 1..end).unwrap_or("").trim_matches(|c| c == '(' || c == ')');
                if text == label {
                    open = if open.is_some() { None } else { Some(i) };
                }
                i = end - 1;
            }
            c if c.is_ascii_digit() && label.len() == 1 && c == label.as_bytes()[0] => {
                open = if open.is_some() { None } else { Some(i) };
            }
            _ => {}
        }
        i += 1;
    }
    open
}

fn first_number(text: &str) -> Option<usize> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: String = text[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Standard atomic weights for the elements drugs carry; anything else falls
/// back to twice the atomic number, which only matters for tie-breaking.
fn average_mass(z: u32) -> f64 {
    match z {
        1 => 1.008,
        3 => 6.94,
        5 => 10.81,
        6 => 12.011,
        7 => 14.007,
        8 => 15.999,
        9 => 18.998,
        11 => 22.990,
        12 => 24.305,
        13 => 26.982,
        14 => 28.085,
        15 => 30.974,
        16 => 32.06,
        17 => 35.45,
        19 => 39.098,
        20 => 40.078,
        26 => 55.845,
        29 => 63.546,
        30 => 65.38,
        33 => 74.922,
        34 => 78.971,
        35 => 79.904,
        53 => 126.904,
        78 => 195.084,
        79 => 196.967,
        z => 2.0 * z as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atom_positions_skip_ring_digits_and_two_letter_elements() {
        assert_eq!(atom_positions("ClC1=CC=C1[Na+]"), vec![0, 2, 5, 6, 8, 10]);
        assert_eq!(atom_positions("C%12CC%12"), vec![0, 4, 5]);
    }
}
