//! Bad SMILES are errors that say what is wrong and where; fragment policy;
//! property tests.

use molclip_chem::{ChemError, FingerprintConfig, FragmentPolicy, Molecule};
use proptest::prelude::*;

fn position(smiles: &str) -> (Option<usize>, String) {
    match Molecule::parse(smiles) {
        Ok(m) => panic!("{smiles:?} parsed as {m:?}"),
        Err(ChemError::Syntax { position, .. }) => (Some(position), Molecule::parse(smiles).unwrap_err().to_string()),
        Err(e @ ChemError::Sanitization { position, .. }) => (position, e.to_string()),
        Err(e) => (None, e.to_string()),
    }
}

#[test]
fn empty_string_is_an_error() {
    assert_eq!(Molecule::parse("").unwrap_err(), ChemError::Empty);
    assert_eq!(Molecule::parse("   ").unwrap_err(), ChemError::Empty);
}

#[test]
fn five_membered_aromatic_carbon_ring_cannot_be_kekulised() {
    let (pos, msg) = position("c1cccc1");
    assert!(msg.contains("kekul") || msg.contains("Kekul"), "{msg}");
    assert!(msg.contains("c1cccc1"), "{msg}");
    // An atom of the ring is named, by its character.
    assert!(pos.is_some_and(|p| p < 7), "{pos:?}");
}

#[test]
fn unclosed_ring_names_its_position() {
    let (pos, msg) = position("CC1CCC");
    assert!(msg.contains("ring closure 1"), "{msg}");
    assert_eq!(pos, Some(2), "{msg}");
}

#[test]
fn unbalanced_parentheses_name_their_position() {
    let (pos, msg) = position("CC(C");
    assert!(msg.contains("parenthes"), "{msg}");
    assert!(pos.is_some(), "{msg}");
    let (pos, msg) = position("CC)C");
    assert!(msg.contains("parenthes") || msg.contains("character"), "{msg}");
    assert_eq!(pos, Some(2), "{msg}");
}

#[test]
fn unknown_elements_are_named() {
    let (pos, msg) = position("C[Xx]C");
    assert!(msg.contains("Xx"), "{msg}");
    assert!(matches!(pos, Some(1..=2)), "{msg}");
    let (pos, msg) = position("CQC");
    assert_eq!(pos, Some(1), "{msg}");
}

#[test]
fn pentavalent_carbon_is_a_sanitization_error() {
    let err = Molecule::parse("C(C)(C)(C)(C)C").unwrap_err();
    assert!(matches!(err, ChemError::Sanitization { .. }), "{err}");
}

#[test]
fn salts_keep_the_largest_organic_fragment_by_default() {
    let whole = Molecule::parse_with("Cl.NCCC[C@@H](N)C(=O)O", FragmentPolicy::Whole).unwrap();
    assert_eq!(whole.num_fragments(), 2);
    assert_eq!(whole.canonical_smiles(), "Cl.NCCC[C@@H](N)C(=O)O");

    let base = Molecule::parse_with("Cl.NCCC[C@@H](N)C(=O)O", FragmentPolicy::Largest).unwrap();
    assert_eq!(base.canonical_smiles(), "NCCC[C@@H](N)C(=O)O");
    assert_eq!(base.input_fragments(), 2);
    assert_eq!(base.num_fragments(), 1);
    // Sodium is bigger than nothing but not organic: acetate wins.
    let acetate = Molecule::parse_with("[Na+].CC(=O)[O-]", FragmentPolicy::Largest).unwrap();
    assert_eq!(acetate.canonical_smiles(), "CC(=O)[O-]");
    // Cisplatin-like: the organic ligand beats a heavier metal ion.
    let ligand = Molecule::parse_with("[Pt+2].N[C@H]1CCCC[C@@H]1N", FragmentPolicy::Largest).unwrap();
    assert_eq!(ligand.canonical_smiles(), "N[C@H]1CCCC[C@@H]1N");
}

#[test]
fn fingerprint_bits_counts_and_widths() {
    let m = Molecule::parse("CCO").unwrap();
    let fp = m.morgan(&FingerprintConfig::default()).unwrap();
    // Ethanol, radius 2: 3 atom environments at r0 (two distinct carbons + O), r1 adds 3, r2 adds
    // 1 (the whole molecule, from the centre); RDKit reports 6 distinct bits.
    assert_eq!(fp.on_bits().len(), 6);
    assert_eq!(fp.dense().iter().sum::<f32>(), 6.0);
    assert!(fp.dense_counts().iter().sum::<f32>() >= 6.0);
    let narrow = m.morgan(&FingerprintConfig { radius: 1, n_bits: 128 }).unwrap();
    assert_eq!(narrow.dense().len(), 128);
    assert!(narrow.on_bits().iter().all(|&b| b < 128));
    assert!(m.morgan(&FingerprintConfig { radius: 7, n_bits: 2048 }).is_err());
    assert!(m.morgan(&FingerprintConfig { radius: 2, n_bits: 1000 }).is_err());
    assert_eq!(fp.tanimoto(&fp), 1.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_never_panics_on_arbitrary_strings(s in "\\PC{0,40}") {
        let _ = Molecule::parse_with(&s, FragmentPolicy::Largest);
    }

    #[test]
    fn parsing_never_panics_on_smiles_alphabet(s in "[CNOScnos()=#1-9\\[\\]@+\\-H.%/\\\\]{0,30}") {
        let _ = Molecule::parse_with(&s, FragmentPolicy::Largest);
    }

    #[test]
    fn canonical_smiles_is_stable_under_reparsing(s in "[CNO]{1,3}(\\((=O|C|N|Cl)\\))?c1ccc([CNO]{0,2})cc1[CNO]{0,3}(C1CC1)?") {
        let first = Molecule::parse(&s);
        prop_assume!(first.is_ok());
        let first = first.unwrap();
        let again = Molecule::parse(first.canonical_smiles()).unwrap();
        prop_assert_eq!(first.canonical_smiles(), again.canonical_smiles());
        prop_assert_eq!(first.graph().atoms.len(), again.graph().atoms.len());
    }
}

#[test]
fn canonical_smiles_of_real_drugs_is_stable_under_reparsing() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/launched_drugs.tsv");
    let rows = molclip_chem::read_smiles_table(std::path::Path::new(path)).unwrap();
    assert!(rows.len() > 1900);
    let mut checked = 0;
    for row in rows.iter().step_by(4) {
        let Ok(first) = Molecule::parse(&row.smiles) else { continue };
        let again = Molecule::parse(first.canonical_smiles()).unwrap();
        assert_eq!(first.canonical_smiles(), again.canonical_smiles(), "{}", row.name);
        checked += 1;
    }
    assert!(checked > 450);
}

#[test]
fn oversized_smiles_are_refused_before_parsing_without_echoing_them() {
    use molclip_chem::{MAX_HEAVY_ATOMS, MAX_SMILES_CHARS};
    // At the cap: parsed. One heavy atom over: refused, counting Cl and Br as one atom and
    // explicit hydrogens as none.
    let at_cap = "C".repeat(MAX_HEAVY_ATOMS);
    assert_eq!(Molecule::parse(&at_cap).unwrap().graph().atoms.len(), MAX_HEAVY_ATOMS);
    let over = format!("Cl{}", "C".repeat(MAX_HEAVY_ATOMS));
    let e = Molecule::parse(&over).unwrap_err();
    assert!(matches!(e, ChemError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("1001 heavy atoms, the limit is 1000"), "{e}");
    let with_hydrogens = format!("[H]{}([H])Br", "C".repeat(MAX_HEAVY_ATOMS - 1));
    Molecule::parse(&with_hydrogens).unwrap();
    // 99,999 atoms (once 239 s and 5.7 GB): refused at once, the message short.
    let huge = "C".repeat(99_999);
    let start = std::time::Instant::now();
    let e = Molecule::parse(&huge).unwrap_err().to_string();
    assert!(start.elapsed().as_secs_f64() < 1.0);
    assert!(e.contains(&format!("99999 characters, the limit is {MAX_SMILES_CHARS}")), "{e}");
    assert!(e.len() < 200, "{} characters of message", e.len());
    let e = Molecule::parse(&"C(".repeat(60)).unwrap_err().to_string();
    assert!(e.contains("(120 characters)") && e.len() < 250, "{e}");
}

#[test]
fn a_non_utf8_table_names_its_line_and_featurizing_streams_in_row_order() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("drugs.tsv");
    std::fs::write(&table, b"name\tsmiles\naspirin\tCC(=O)Oc1ccccc1C(=O)O\ncaf\xe9ine\tCn1cnc2c1c(=O)n(C)c(=O)n2C\n")
        .unwrap();
    let e = molclip_chem::read_smiles_table(&table).unwrap_err().to_string();
    assert!(e.contains("drugs.tsv") && e.contains("line 3: not UTF-8"), "{e}");
    // 2,500 rows: three chunks, one bad row; the streamed lines are the records, in order.
    let rows: Vec<molclip_chem::SmilesRow> = (0..2500)
        .map(|i| molclip_chem::SmilesRow {
            line: i + 2,
            name: format!("d{i}"),
            smiles: if i == 1700 { "C1CC".into() } else { "C".repeat(1 + i % 7) },
            fields: Default::default(),
        })
        .collect();
    let options = molclip_chem::FeaturizeOptions::default();
    let mut out = Vec::new();
    let mut failed_lines = Vec::new();
    let failed = molclip_chem::featurize_to(&rows, &options, &mut out, &mut |r, _| failed_lines.push(r.line)).unwrap();
    assert_eq!((failed, failed_lines), (1, vec![1702]));
    let expected: String =
        molclip_chem::featurize_rows(&rows, &options).iter().map(|r| r.to_json().to_string() + "\n").collect();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}
