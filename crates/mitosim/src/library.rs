//! The drugs of a simulated screen: real names, real SMILES, real MoAs.
//!
//! The built-in library covers the mitochondrial mechanisms a live-cell
//! TMRM screen sees (uncouplers, electron-transport and ATP-synthase
//! inhibitors), cytoskeletal and protein-synthesis drugs, and common MoAs
//! whose mitochondrial phenotype is weak or unknown. Any other table with
//! `name, moa, smiles` columns can replace it.

use std::collections::BTreeMap;
use std::path::Path;

use molclip_chem::{FingerprintConfig, FragmentPolicy, Molecule};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::LibraryConfig;
use crate::error::SimError;

/// The control every screen carries.
pub const CONTROL_MOA: &str = "control";
/// The vehicle control every screen has: name and SMILES.
pub const CONTROL_DRUG: (&str, &str) = ("DMSO", "CS(C)=O");

/// (MoA, [(name, SMILES)]), in the order presets take them.
pub const BUILTIN: &[(&str, &[(&str, &str)])] = &[
    ("mitochondrial uncoupler", &[
        ("FCCP", "N#CC(C#N)=NNc1ccc(OC(F)(F)F)cc1"),
        ("CCCP", "N#CC(C#N)=NNc1cccc(Cl)c1"),
        ("2,4-dinitrophenol", "Oc1ccc(cc1[N+]([O-])=O)[N+]([O-])=O"),
        ("niclosamide", "Oc1ccc(Cl)cc1C(=O)Nc1ccc(cc1Cl)[N+]([O-])=O"),
        ("pentachlorophenol", "Oc1c(Cl)c(Cl)c(Cl)c(Cl)c1Cl"),
    ]),
    ("mitochondrial complex I inhibitor", &[
        ("rotenone", "CC(=C)[C@H]1Cc2c(O1)ccc1c2O[C@@H]2COc3cc(OC)c(OC)cc3[C@@H]2C1=O"),
        ("piericidin A", "C/C=C(\\C)[C@@H](O)[C@H](C)/C=C(\\C)/C=C/C/C(C)=C/Cc1nc(OC)c(OC)c(O)c1C"),
        ("deguelin", "COc1cc2c(cc1OC)[C@@H]1C(=O)c3ccc4c(c3O[C@@H]1CO2)C=CC(C)(C)O4"),
        ("phenformin", "NC(N)=NC(=N)NCCc1ccccc1"),
        ("metformin", "CN(C)C(=N)N=C(N)N"),
    ]),
    ("mitochondrial complex III inhibitor", &[
        ("antimycin A", "CCCCCC[C@@H]1[C@H](OC(=O)CC(C)C)[C@@H](C)OC(=O)[C@H](NC(=O)c2cccc(NC=O)c2O)[C@@H](C)OC1=O"),
        ("myxothiazol", "NC(=O)/C=C(\\OC)[C@@H](C)[C@@H](OC)/C=C/c1nc(cs1)-c1csc(n1)[C@@H](C)/C=C/C=C/C(C)C"),
        ("azoxystrobin", "CO/C=C(/C(=O)OC)c1ccccc1Oc1cc(Oc2ccccc2C#N)ncn1"),
        ("pyraclostrobin", "COC(=O)N(OC)c1ccccc1COc1ccn(n1)-c1ccc(Cl)cc1"),
        ("atovaquone", "OC1=C([C@H]2CC[C@@H](CC2)c2ccc(Cl)cc2)C(=O)c2ccccc2C1=O"),
    ]),
    ("ATP synthase inhibitor", &[
        ("oligomycin A", "CC[C@@H]1C[C@@H](C)[C@@H](O)[C@@H](C)C(=O)[C@@H](C)[C@H](O)[C@@H](C)C(=O)[C@](C)(O)[C@@H](O)[C@H](C)C[C@@H](C)/C=C/C(=O)O[C@@H]([C@@H](C)[C@H](O)[C@@H](C)C(=O)/C=C/C=C/1)[C@@H](C)[C@@H]1CC[C@@]2(O1)CC[C@@H](C)[C@@H](C[C@@H](C)O)O2"),
        ("bedaquiline", "CN(C)CC[C@@](O)(c1cccc2ccccc12)[C@H](c1ccccc1)c1cc2cc(Br)ccc2nc1OC"),
        ("resveratrol", "Oc1ccc(/C=C/c2cc(O)cc(O)c2)cc1"),
        ("piceatannol", "Oc1ccc(/C=C/c2cc(O)cc(O)c2)cc1O"),
        ("quercetin", "Oc1cc(O)c2c(c1)oc(-c1ccc(O)c(O)c1)c(O)c2=O"),
    ]),
    ("microtubule destabiliser", &[
        ("nocodazole", "COC(=O)Nc1nc2cc(ccc2[nH]1)C(=O)c1cccs1"),
        ("colchicine", "COc1cc2CC[C@H](NC(C)=O)C3=CC(=O)C(OC)=CC=C3c2c(OC)c1OC"),
        ("podophyllotoxin", "COc1cc(cc(OC)c1OC)[C@@H]1[C@H]2[C@@H](COC2=O)[C@H](O)c2cc3OCOc3cc12"),
        ("mebendazole", "COC(=O)Nc1nc2cc(ccc2[nH]1)C(=O)c1ccccc1"),
        ("albendazole", "CCCSc1ccc2nc(NC(=O)OC)[nH]c2c1"),
    ]),
    ("microtubule stabiliser", &[
        ("paclitaxel", "CC(=O)O[C@@]12CO[C@@H]1C[C@H](O)[C@]1(C)[C@@H]2[C@H](OC(=O)c2ccccc2)[C@]2(O)C[C@H](OC(=O)[C@H](O)[C@@H](NC(=O)c3ccccc3)c3ccccc3)C(C)=C([C@@H](OC(C)=O)C1=O)C2(C)C"),
        ("docetaxel", "CC(C)(C)OC(=O)N[C@@H](c1ccccc1)[C@@H](O)C(=O)O[C@H]1C[C@@]2(O)[C@@H](OC(=O)c3ccccc3)[C@@H]3[C@]4(OC(C)=O)CO[C@@H]4C[C@H](O)[C@@]3(C)C(=O)[C@H](O)C(=C1C)C2(C)C"),
        ("cabazitaxel", "CO[C@H]1C[C@H]2OC[C@@]2(OC(C)=O)[C@H]2[C@H](OC(=O)c3ccccc3)[C@]3(O)C[C@H](OC(=O)[C@H](O)[C@@H](NC(=O)OC(C)(C)C)c4ccccc4)C(C)=C([C@@H](OC)C(=O)[C@]12C)C3(C)C"),
        ("epothilone B", "CC(=Cc1csc(C)n1)[C@@H]1C[C@@H]2O[C@]2(C)CCC[C@H](C)[C@H](O)[C@@H](C)C(=O)C(C)(C)[C@@H](O)CC(=O)O1"),
        ("ixabepilone", "CC(=Cc1csc(C)n1)[C@@H]1C[C@@H]2O[C@]2(C)CCC[C@H](C)[C@H](O)[C@@H](C)C(=O)C(C)(C)[C@@H](O)CC(=O)N1"),
    ]),
    ("protein synthesis inhibitor", &[
        ("cycloheximide", "C[C@H]1C[C@H](C)C(=O)[C@@H](C1)[C@H](O)CC1CC(=O)NC(=O)C1"),
        ("anisomycin", "COc1ccc(C[C@@H]2NC[C@H](O)[C@H]2OC(C)=O)cc1"),
        ("emetine", "CC[C@H]1CN2CCc3cc(OC)c(OC)cc3[C@@H]2C[C@@H]1C[C@H]1NCCc2cc(OC)c(OC)cc12"),
        ("puromycin", "CN(C)c1ncnc2n(cnc12)[C@@H]1O[C@H](CO)[C@@H](NC(=O)[C@@H](N)Cc2ccc(OC)cc2)[C@H]1O"),
        ("chloramphenicol", "OC[C@@H](NC(=O)C(Cl)Cl)[C@H](O)c1ccc(cc1)[N+]([O-])=O"),
    ]),
    ("topoisomerase inhibitor", &[
        ("camptothecin", "CC[C@@]1(O)C(=O)OCc2c1cc1-c3nc4ccccc4cc3Cn1c2=O"),
        ("topotecan", "CC[C@@]1(O)C(=O)OCc2c1cc1-c3nc4ccc(O)c(CN(C)C)c4cc3Cn1c2=O"),
        ("doxorubicin", "COc1cccc2C(=O)c3c(O)c4C[C@](O)(C[C@H](O[C@H]5C[C@H](N)[C@H](O)[C@H](C)O5)c4c(O)c3C(=O)c12)C(=O)CO"),
        ("mitoxantrone", "OCCNCCNc1ccc(NCCNCCO)c2C(=O)c3c(O)ccc(O)c3C(=O)c12"),
        ("amsacrine", "COc1cc(NS(C)(=O)=O)ccc1Nc1c2ccccc2nc2ccccc12"),
    ]),
    ("HDAC inhibitor", &[
        ("vorinostat", "ONC(=O)CCCCCCC(=O)Nc1ccccc1"),
        ("panobinostat", "Cc1[nH]c2ccccc2c1CCNCc1ccc(/C=C/C(=O)NO)cc1"),
        ("belinostat", "ONC(=O)/C=C/c1cccc(c1)S(=O)(=O)Nc1ccccc1"),
        ("entinostat", "Nc1ccccc1NC(=O)c1ccc(CNC(=O)OCc2cccnc2)cc1"),
        ("valproic acid", "CCCC(CCC)C(O)=O"),
    ]),
    ("proteasome inhibitor", &[
        ("bortezomib", "CC(C)C[C@H](NC(=O)[C@H](Cc1ccccc1)NC(=O)c1cnccn1)B(O)O"),
        ("carfilzomib", "CC(C)C[C@H](NC(=O)[C@H](Cc1ccccc1)NC(=O)[C@H](CC(C)C)NC(=O)[C@H](CCc1ccccc1)NC(=O)CN1CCOCC1)C(=O)[C@@]1(C)CO1"),
        ("ixazomib", "CC(C)C[C@H](NC(=O)CNC(=O)c1cc(Cl)ccc1Cl)B(O)O"),
        ("MG-132", "CC(C)C[C@H](NC(=O)OCc1ccccc1)C(=O)N[C@@H](CC(C)C)C(=O)N[C@@H](CC(C)C)C=O"),
        ("delanzomib", "CC(C)C[C@H](NC(=O)[C@@H](NC(=O)c1cccc(n1)-c1ccccc1)[C@@H](C)O)B(O)O"),
    ]),
    ("HMGCR inhibitor", &[
        ("atorvastatin", "CC(C)c1c(C(=O)Nc2ccccc2)c(-c2ccccc2)c(-c2ccc(F)cc2)n1CC[C@@H](O)C[C@@H](O)CC(O)=O"),
        ("simvastatin", "CCC(C)(C)C(=O)O[C@H]1C[C@@H](C)C=C2C=C[C@H](C)[C@H](CC[C@@H]3C[C@@H](O)CC(=O)O3)[C@@H]12"),
        ("lovastatin", "CC[C@H](C)C(=O)O[C@H]1C[C@@H](C)C=C2C=C[C@H](C)[C@H](CC[C@@H]3C[C@@H](O)CC(=O)O3)[C@@H]12"),
        ("fluvastatin", "CC(C)n1c(/C=C/[C@@H](O)C[C@@H](O)CC(O)=O)c(-c2ccc(F)cc2)c2ccccc12"),
        ("rosuvastatin", "CC(C)c1nc(nc(-c2ccc(F)cc2)c1/C=C/[C@@H](O)C[C@@H](O)CC(O)=O)N(C)S(C)(=O)=O"),
    ]),
    ("EGFR inhibitor", &[
        ("gefitinib", "COc1cc2ncnc(Nc3ccc(F)c(Cl)c3)c2cc1OCCCN1CCOCC1"),
        ("erlotinib", "COCCOc1cc2ncnc(Nc3cccc(c3)C#C)c2cc1OCCOC"),
        ("lapatinib", "CS(=O)(=O)CCNCc1ccc(o1)-c1ccc2ncnc(Nc3ccc(OCc4cccc(F)c4)c(Cl)c3)c2c1"),
        ("afatinib", "CN(C)C/C=C/C(=O)Nc1cc2c(Nc3ccc(F)c(Cl)c3)ncnc2cc1O[C@H]1CCOC1"),
        ("osimertinib", "COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc1nccc(n1)-c1cn(C)c2ccccc12"),
    ]),
    ("glucocorticoid receptor agonist", &[
        ("dexamethasone", "C[C@@H]1C[C@H]2[C@@H]3CCC4=CC(=O)C=C[C@]4(C)[C@@]3(F)[C@@H](O)C[C@]2(C)[C@@]1(O)C(=O)CO"),
        ("betamethasone", "C[C@H]1C[C@H]2[C@@H]3CCC4=CC(=O)C=C[C@]4(C)[C@@]3(F)[C@@H](O)C[C@]2(C)[C@@]1(O)C(=O)CO"),
        ("prednisolone", "C[C@]12C[C@H](O)[C@H]3[C@@H](CCC4=CC(=O)C=C[C@]34C)[C@@H]1CC[C@]2(O)C(=O)CO"),
        ("hydrocortisone", "C[C@]12CCC(=O)C=C1CC[C@H]1[C@@H]3CC[C@](O)(C(=O)CO)[C@@]3(C)C[C@H](O)[C@H]21"),
        ("methylprednisolone", "C[C@H]1C[C@H]2[C@@H]3CC[C@](O)(C(=O)CO)[C@@]3(C)C[C@H](O)[C@@H]2[C@@]2(C)C=CC(=O)C=C12"),
    ]),
];

/// One drug of the screen.
#[derive(Debug, Clone)]
pub struct Drug {
    /// Folder name under `<replicate>/<split>/` (the annotation's `index`).
    pub index: String,
    /// Dense id (the folder name).
    pub drug_id: usize,
    /// The drug's name.
    pub name: String,
    /// Its SMILES.
    pub smiles: String,
    /// Its MoA's name.
    pub moa: String,
    /// Its MoA's dense id.
    pub moa_id: usize,
    /// Held out of training: written to `novel/`.
    pub novel: bool,
    /// Radius-2, 2048-bit Morgan fingerprint of the largest organic fragment.
    pub fingerprint: Vec<f32>,
}

/// The screen's drugs, control first, then by MoA.
#[derive(Debug, Clone)]
pub struct DrugLibrary {
    /// Every drug, the control first.
    pub drugs: Vec<Drug>,
    /// MoA names by id.
    pub moas: Vec<String>,
}

impl DrugLibrary {
    /// Build the library a config asks for; `base` resolves a relative table path.
    pub fn from_config(config: &LibraryConfig, seed: u64, base: &Path) -> Result<Self, SimError> {
        let entries: Vec<(String, String, String)> = match &config.table {
            None => BUILTIN
                .iter()
                .flat_map(|(moa, drugs)| {
                    drugs.iter().map(move |(n, s)| (n.to_string(), moa.to_string(), s.to_string()))
                })
                .collect(),
            Some(table) => read_table(&base.join(table))?,
        };
        // Group by MoA in first-seen order, as the table lists them.
        let mut by_moa: Vec<(String, Vec<(String, String)>)> = Vec::new();
        let mut seen = BTreeMap::new();
        for (name, moa, smiles) in entries {
            if moa.eq_ignore_ascii_case(CONTROL_MOA) || name == CONTROL_DRUG.0 {
                continue;
            }
            let slot = *seen.entry(moa.clone()).or_insert_with(|| {
                by_moa.push((moa.clone(), Vec::new()));
                by_moa.len() - 1
            });
            by_moa[slot].1.push((name, smiles));
        }
        by_moa.retain(|(_, d)| d.len() >= config.min_drugs_per_moa.max(1));
        // Largest MoAs first; ties keep table order (stable sort).
        if config.table.is_some() {
            by_moa.sort_by_key(|(_, d)| std::cmp::Reverse(d.len()));
        }
        if config.max_moas > 0 {
            by_moa.truncate(config.max_moas);
        }
        if by_moa.is_empty() {
            return Err(SimError::config(
                "library",
                format!("no drugs left: no MoA has at least {} drugs", config.min_drugs_per_moa),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x006c_6962_7261_7279);
        let mut drugs = vec![make_drug(CONTROL_DRUG.0, CONTROL_DRUG.1, CONTROL_MOA, 0, 0, false)?];
        let mut moas = vec![CONTROL_MOA.to_string()];
        for (moa, mut members) in by_moa {
            if config.drugs_per_moa > 0 && members.len() > config.drugs_per_moa {
                members.shuffle(&mut rng);
                members.truncate(config.drugs_per_moa);
            }
            let moa_id = moas.len();
            moas.push(moa.clone());
            let n_novel = config.novel_drugs_per_moa.min(members.len().saturating_sub(1));
            let n = members.len();
            for (k, (name, smiles)) in members.into_iter().enumerate() {
                let drug_id = drugs.len();
                // The last drugs of each MoA are the novel ones.
                drugs.push(make_drug(&name, &smiles, &moa, drug_id, moa_id, k >= n - n_novel)?);
            }
        }
        Ok(Self { drugs, moas })
    }

    /// The drugs that are trained on (everything but the novel ones).
    pub fn training_drugs(&self) -> impl Iterator<Item = &Drug> {
        self.drugs.iter().filter(|d| !d.novel)
    }
    /// The drugs held out as novel (never trained on).
    pub fn novel_drugs(&self) -> impl Iterator<Item = &Drug> {
        self.drugs.iter().filter(|d| d.novel)
    }
}

fn make_drug(
    name: &str,
    smiles: &str,
    moa: &str,
    drug_id: usize,
    moa_id: usize,
    novel: bool,
) -> Result<Drug, SimError> {
    let err = |source| SimError::Molecule { name: name.into(), moa: moa.into(), source };
    let mol = Molecule::parse_with(smiles, FragmentPolicy::Largest).map_err(err)?;
    let fingerprint = mol.morgan(&FingerprintConfig::default()).map_err(err)?.dense();
    Ok(Drug {
        index: drug_id.to_string(),
        drug_id,
        name: name.into(),
        smiles: smiles.into(),
        moa: moa.into(),
        moa_id,
        novel,
        fingerprint,
    })
}

fn read_table(path: &Path) -> Result<Vec<(String, String, String)>, SimError> {
    let err = |reason: String| SimError::Drugs { path: path.into(), reason };
    if !path.exists() {
        return Err(err("not found (the bench and mito presets read ../shared/data/launched_drugs.tsv; pass --drugs FILE.tsv with columns name, moa, smiles)".into()));
    }
    let rows = molclip_chem::read_smiles_table(path).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let moa =
            row.fields.get("moa").ok_or_else(|| err("no `moa` column: expected columns name, moa, smiles".into()))?;
        if row.smiles.is_empty() || moa.is_empty() {
            return Err(err(format!("line {}: empty smiles or moa for {:?}", row.line, row.name)));
        }
        out.push((row.name.clone(), moa.clone(), row.smiles.clone()));
    }
    if out.is_empty() {
        return Err(err("no drugs: the table has a header but no rows".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_library_parses_and_covers_the_mitochondrial_moas() {
        let moas: Vec<&str> = BUILTIN.iter().map(|(m, _)| *m).collect();
        assert!(moas.len() >= 12);
        for needed in [
            "uncoupler",
            "complex I ",
            "complex III",
            "ATP synthase",
            "destabiliser",
            "stabiliser",
            "protein synthesis",
            "topoisomerase",
        ] {
            assert!(moas.iter().any(|m| m.contains(needed)), "{needed}");
        }
        for (moa, drugs) in BUILTIN {
            for (name, smiles) in *drugs {
                make_drug(name, smiles, moa, 0, 0, false).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    #[test]
    fn config_caps_moas_and_drugs_and_holds_out_novel_drugs() {
        let cfg =
            LibraryConfig { table: None, min_drugs_per_moa: 1, max_moas: 5, drugs_per_moa: 3, novel_drugs_per_moa: 1 };
        let lib = DrugLibrary::from_config(&cfg, 1, Path::new(".")).unwrap();
        assert_eq!(lib.moas.len(), 6);
        assert_eq!(lib.drugs.len(), 1 + 5 * 3);
        assert_eq!(lib.novel_drugs().count(), 5);
        assert_eq!(lib.drugs[0].name, "DMSO");
        assert!(!lib.drugs[0].novel);
        for (i, d) in lib.drugs.iter().enumerate() {
            assert_eq!(d.drug_id, i);
            assert_eq!(lib.moas[d.moa_id], d.moa);
        }
    }

    #[test]
    fn empty_selection_is_an_error() {
        let cfg = LibraryConfig { min_drugs_per_moa: 50, ..LibraryConfig::default() };
        let e = DrugLibrary::from_config(&cfg, 1, Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("no drugs left"), "{e}");
    }
}
