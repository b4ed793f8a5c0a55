//! The drug table of a dataset, in either of its two forms:
//!
//! - MitoReID's published `annotation.xlsx`: sheet `FDA-list` with `index` (the drug
//!   folder), `name`, `moa_id` (an integer, `unknown` or blank), `moa_choose` (1: the drug
//!   belongs to the MoA task) and `common_moa` (the MoA's name), other columns ignored;
//!   sheet `Novel-list` (`index`, `name`, `cas`) for the drugs of `novel/`.
//! - Our own `annotation.csv`: `index`, `moa_id`, and optionally `drug_id`, `name`,
//!   `smiles`, `moa`, `cas`, `moa_choose`, `novel` (1: a drug of `novel/`).
//!
//! `molclip annotate` joins SMILES from a chemistry table into the published annotation
//! (which has none) and writes it in the CSV form.
//!
//! Drugs without a `drug_id` column are numbered in row order. A drug takes part in the
//! MoA task when its MoA is known and `moa_choose` is 1 (or the column is absent).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::DataError;
use molclip_core::Split;

/// One drug's row of the annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrugRecord {
    /// The drug folder's name.
    pub index: String,
    /// The drug's dense id (the `drug_id` column, or the row's position).
    pub drug_id: usize,
    /// Its MoA's id; `None` when the table says `unknown` or leaves it blank.
    pub moa_id: Option<usize>,
    /// `moa_choose`: whether the drug belongs to the MoA task (true without the column).
    pub moa_choose: bool,
    /// The drug's name, when given.
    pub name: Option<String>,
    /// Its SMILES, when given.
    pub smiles: Option<String>,
    /// Its MoA's name (`moa` or `common_moa`), when given.
    pub moa: Option<String>,
    /// Its CAS registry number, when given.
    pub cas: Option<String>,
}

impl DrugRecord {
    /// The drug's MoA id in the MoA task: known and chosen, else `None`.
    pub fn moa_task_id(&self) -> Option<usize> {
        self.moa_id.filter(|_| self.moa_choose)
    }

    /// Whether the drug is the vehicle control: its folder is `dmso` (MitoReID's table) or
    /// its name is DMSO (molclip's simulated tables).
    pub fn is_control(&self) -> bool {
        self.index.eq_ignore_ascii_case("dmso") || self.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case("dmso"))
    }
}

/// Drugs by folder name.
#[derive(Debug, Clone, Default)]
pub struct Annotation {
    /// Rows by `index`.
    pub drugs: BTreeMap<String, DrugRecord>,
    /// The novel drugs' own rows (`Novel-list`), by `index`; the CSV form keeps novel
    /// drugs in `drugs`.
    pub novel: BTreeMap<String, DrugRecord>,
}

/// The sheet MitoReID's `annotation.xlsx` keeps its drugs in.
pub const XLSX_SHEET: &str = "FDA-list";
/// The sheet of the novel drugs.
pub const XLSX_NOVEL_SHEET: &str = "Novel-list";

/// Which columns a table must have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    /// The drug table: `index` and `moa_id`.
    Drugs,
    /// The novel drugs: `index` only.
    Novel,
}

impl Annotation {
    /// `annotation.csv` in `dir`, or else `annotation.xlsx` (sheets `FDA-list`, `Novel-list`).
    pub fn read_dir(dir: &Path) -> Result<Self, DataError> {
        let (csv, xlsx) = (dir.join("annotation.csv"), dir.join("annotation.xlsx"));
        if csv.exists() {
            Self::read_csv(&csv)
        } else if xlsx.exists() {
            Self::read_xlsx(&xlsx)
        } else {
            Err(DataError::invalid(
                &csv,
                "missing: every dataset needs annotation.csv (columns index, moa_id, ...) or MitoReID's \
                 annotation.xlsx (sheet FDA-list)",
            ))
        }
    }

    /// `annotation.csv`: columns `index`, `moa_id`, and optionally `drug_id`, `name`, `smiles`,
    /// `moa`, `cas`, `moa_choose`.
    pub fn read_csv(path: &Path) -> Result<Self, DataError> {
        let (headers, rows) = read_csv_table(path)?;
        let c_novel = headers.iter().position(|h| h.trim().eq_ignore_ascii_case("novel"));
        let is_novel = |r: &Vec<String>| c_novel.is_some_and(|c| r.get(c).is_some_and(|v| v.trim() == "1"));
        let (novel, drugs): (Vec<_>, Vec<_>) = rows.into_iter().partition(is_novel);
        let drugs = from_rows(path, &headers, drugs, Table::Drugs, 0)?;
        let novel = from_rows(path, &headers, novel, Table::Drugs, drugs.len())?;
        Ok(Self { drugs, novel })
    }

    /// MitoReID's spreadsheet: sheet `FDA-list`, and `Novel-list` when there is one; the
    /// header in each sheet's first row.
    pub fn read_xlsx(path: &Path) -> Result<Self, DataError> {
        use calamine::Reader;
        let mut book = calamine::open_workbook_auto(path)
            .map_err(|e| DataError::invalid(path, format!("cannot open workbook: {e}")))?;
        let names = book.sheet_names();
        let mut sheet = |name: &str| -> Result<(Vec<String>, Vec<Vec<String>>), DataError> {
            let range = book.worksheet_range(name).map_err(|e| {
                DataError::invalid(path, format!("no sheet {name:?} ({e}); sheets: {}", names.join(", ")))
            })?;
            let mut rows = range.rows().map(|r| r.iter().map(cell_text).collect::<Vec<String>>());
            let headers = rows.next().ok_or_else(|| DataError::invalid(path, format!("sheet {name:?} is empty")))?;
            Ok((headers, rows.collect()))
        };
        let (headers, rows) = sheet(XLSX_SHEET)?;
        let drugs = from_rows(path, &headers, rows, Table::Drugs, 0)?;
        let novel = if names.iter().any(|n| n == XLSX_NOVEL_SHEET) {
            let (headers, rows) = sheet(XLSX_NOVEL_SHEET)?;
            from_rows(path, &headers, rows, Table::Novel, drugs.len())?
        } else {
            BTreeMap::new()
        };
        Ok(Self { drugs, novel })
    }

    /// The record for a drug folder; the part after `-` is a suffix (`12-a` is drug `12`).
    pub fn lookup(&self, folder: &str) -> Option<&DrugRecord> {
        in_table(&self.drugs, folder)
    }

    /// The record for a drug folder of `split`: novel folders are looked up among the novel
    /// drugs first.
    pub fn lookup_in(&self, split: Split, folder: &str) -> Option<&DrugRecord> {
        let novel = if split == Split::Novel { in_table(&self.novel, folder) } else { None };
        novel.or_else(|| self.lookup(folder))
    }

    /// Every drug, the novel ones included.
    pub fn records(&self) -> impl Iterator<Item = &DrugRecord> {
        self.drugs.values().chain(self.novel.values())
    }

    /// The SMILES of the drug of a folder of `split`, when the annotation has one.
    pub fn smiles(&self, split: Split, folder: &str) -> Option<&str> {
        self.lookup_in(split, folder).and_then(|r| r.smiles.as_deref()).filter(|s| !s.is_empty())
    }

    /// The name of the drug of a folder of `split` from the annotation, or else the folder name.
    pub fn drug_name(&self, split: Split, folder: &str) -> String {
        self.lookup_in(split, folder).and_then(|r| r.name.clone()).unwrap_or_else(|| folder.to_string())
    }

    /// MoA name for an id (falls back to the id itself).
    pub fn moa_name(&self, moa_id: usize) -> String {
        self.records()
            .find(|d| d.moa_id == Some(moa_id))
            .and_then(|d| d.moa.clone())
            .unwrap_or_else(|| format!("moa {moa_id}"))
    }
}

/// A drug's structure from a chemistry table, for [`Annotation::join_smiles`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmilesSource {
    /// The drug's name.
    pub name: String,
    /// Its SMILES.
    pub smiles: String,
    /// Its CAS registry number, when the table has one.
    pub cas: Option<String>,
}

/// What [`Annotation::join_smiles`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JoinReport {
    /// Drugs given a SMILES through their CAS number.
    pub by_cas: usize,
    /// Drugs given a SMILES through their name.
    pub by_name: usize,
    /// Drugs that had a SMILES already (kept).
    pub kept: usize,
    /// Drugs left without one, by name (or folder when unnamed).
    pub unmatched: Vec<String>,
}

/// A name compared without case, spaces or punctuation (`Acetyl-salicylic acid` matches
/// `acetylsalicylic ACID`).
fn name_key(name: &str) -> String {
    name.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

impl Annotation {
    /// Gives every drug without a SMILES the one `table` has for its CAS number or, failing
    /// that, its name (compared without case and punctuation). The first row wins where a
    /// table lists a name twice.
    pub fn join_smiles(&mut self, table: &[SmilesSource]) -> JoinReport {
        let mut by_name: BTreeMap<String, &str> = BTreeMap::new();
        let mut by_cas: BTreeMap<&str, &str> = BTreeMap::new();
        for row in table.iter().filter(|r| !r.smiles.trim().is_empty()) {
            by_name.entry(name_key(&row.name)).or_insert(&row.smiles);
            if let Some(cas) = row.cas.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
                by_cas.entry(cas).or_insert(&row.smiles);
            }
        }
        let mut report = JoinReport::default();
        for rec in self.drugs.values_mut().chain(self.novel.values_mut()) {
            if rec.smiles.is_some() {
                report.kept += 1;
                continue;
            }
            let cas = rec.cas.as_deref().and_then(|c| by_cas.get(c.trim()));
            let name = rec.name.as_deref().and_then(|n| by_name.get(&name_key(n)));
            match (cas, name) {
                (Some(s), _) => {
                    rec.smiles = Some(s.to_string());
                    report.by_cas += 1;
                }
                (None, Some(s)) => {
                    rec.smiles = Some(s.to_string());
                    report.by_name += 1;
                }
                (None, None) => report.unmatched.push(rec.name.clone().unwrap_or_else(|| rec.index.clone())),
            }
        }
        report
    }

    /// The annotation in the CSV form (`read_csv` reads it back to the same annotation).
    pub fn to_csv(&self) -> String {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let header = ["index", "drug_id", "name", "cas", "smiles", "moa", "moa_id", "moa_choose", "novel"];
        let mut rows = vec![header.map(String::from).to_vec()];
        for (novel, rec) in self.drugs.values().map(|r| (false, r)).chain(self.novel.values().map(|r| (true, r))) {
            let text = |v: &Option<String>| v.clone().unwrap_or_default();
            rows.push(vec![
                rec.index.clone(),
                rec.drug_id.to_string(),
                text(&rec.name),
                text(&rec.cas),
                text(&rec.smiles),
                text(&rec.moa),
                rec.moa_id.map_or_else(|| "unknown".into(), |m| m.to_string()),
                (rec.moa_choose as u8).to_string(),
                (novel as u8).to_string(),
            ]);
        }
        for row in rows {
            writer.write_record(&row).expect("writing to memory");
        }
        String::from_utf8(writer.into_inner().expect("writing to memory")).expect("UTF-8 fields")
    }
}

/// A CSV file's header and rows, as text.
fn read_csv_table(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), DataError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| DataError::invalid(path, e.to_string()))?;
    let headers: Vec<String> =
        reader.headers().map_err(|e| DataError::invalid(path, e.to_string()))?.iter().map(str::to_string).collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| DataError::invalid(path, format!("line {}: {e}", i + 2)))?;
        rows.push(record.iter().map(str::to_string).collect());
    }
    Ok((headers, rows))
}

/// Rows of a drug table; drugs without a `drug_id` column are numbered from `first_id` in
/// row order.
fn from_rows(
    path: &Path,
    headers: &[String],
    rows: Vec<Vec<String>>,
    table: Table,
    first_id: usize,
) -> Result<BTreeMap<String, DrugRecord>, DataError> {
    let headers: Vec<String> = headers.iter().map(|h| h.trim().to_lowercase()).collect();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let expected = match table {
        Table::Drugs => "index, moa_id",
        Table::Novel => "index",
    };
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            DataError::invalid(
                path,
                format!("no `{name}` column (expected at least {expected}; found {})", headers.join(", ")),
            )
        })
    };
    let c_index = need("index")?;
    let c_moa = if table == Table::Drugs { Some(need("moa_id")?) } else { None };
    let (c_drug, c_choose) = (col("drug_id"), col("moa_choose"));
    let (c_name, c_smiles, c_cas) = (col("name"), col("smiles"), col("cas"));
    let c_moa_name = col("moa").or_else(|| col("common_moa"));
    let mut drugs = BTreeMap::new();
    let mut next_id = first_id;
    for (row, record) in rows.iter().enumerate() {
        let line = row + 2;
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let get = |c: usize| record.get(c).map_or("", |s| s.trim()).to_string();
        let int = |c: usize, what: &str| {
            get(c).parse::<usize>().map_err(|_| {
                DataError::invalid(path, format!("line {line}: {what} {:?} is not a non-negative integer", get(c)))
            })
        };
        let opt = |c: Option<usize>| c.map(get).filter(|s| !s.is_empty());
        let moa_id = match c_moa.map(get) {
            None => None,
            Some(v) if v.is_empty() || v.eq_ignore_ascii_case("unknown") || v.eq_ignore_ascii_case("nan") => None,
            Some(_) => Some(int(c_moa.expect("present"), "moa_id")?),
        };
        let moa_choose = match c_choose.map(get).as_deref() {
            None => table == Table::Drugs,
            Some("1") => true,
            Some("0" | "") => false,
            Some(other) => {
                return Err(DataError::invalid(
                    path,
                    format!("line {line}: moa_choose {other:?}: expected 1, 0 or blank"),
                ))
            }
        };
        let drug_id = match c_drug {
            Some(c) => int(c, "drug_id")?,
            None => next_id,
        };
        next_id += 1;
        let rec = DrugRecord {
            index: get(c_index),
            drug_id,
            moa_id,
            moa_choose,
            name: opt(c_name),
            smiles: opt(c_smiles),
            moa: opt(c_moa_name),
            cas: opt(c_cas),
        };
        if rec.index.is_empty() {
            return Err(DataError::invalid(path, format!("line {line}: empty index")));
        }
        if drugs.insert(rec.index.clone(), rec).is_some() {
            return Err(DataError::invalid(path, format!("line {line}: index {:?} appears twice", get(c_index))));
        }
    }
    Ok(drugs)
}

/// Spreadsheet cells as text; whole-number floats lose their `.0` so ids match folder names.
fn cell_text(cell: &calamine::Data) -> String {
    match cell {
        calamine::Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        other => other.to_string(),
    }
}

/// A drug folder's row in `table`, by its whole name or else by its drug id part.
fn in_table<'a>(table: &'a BTreeMap<String, DrugRecord>, folder: &str) -> Option<&'a DrugRecord> {
    table.get(folder).or_else(|| table.get(drug_key(folder)))
}

/// The drug id part of a folder name: everything before the first `-`.
pub fn drug_key(folder: &str) -> &str {
    folder.split('-').next().unwrap_or(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<BTreeMap<String, DrugRecord>, DataError> {
        let mut lines = text.lines().map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>());
        let headers = lines.next().unwrap();
        from_rows(Path::new("annotation.xlsx"), &headers, lines.collect(), Table::Drugs, 0)
    }

    #[test]
    fn smiles_join_by_cas_then_name_and_the_csv_form_reads_back() {
        let mut a = Annotation {
            drugs: table(
                "index,name,cas,moa_id,moa_choose,common_moa\n\
                 dmso,DMSO,,unknown,0,\n\
                 1,Acetyl-Salicylic Acid,50-78-2,4,1,COX inhibitor\n\
                 2,Caffeine,58-08-2,3,1,adenosine antagonist\n\
                 3,Nothing known,,7,0,\n",
            )
            .unwrap(),
            novel: BTreeMap::new(),
        };
        // A novel drug whose folder name is also a screened drug's: the split tells them apart.
        let mut novel = a.drugs["2"].clone();
        (novel.name, novel.cas, novel.moa_id, novel.drug_id) = (Some("Aspirin".into()), None, None, 4);
        a.novel.insert("2".into(), novel);
        let source = |name: &str, smiles: &str, cas: Option<&str>| SmilesSource {
            name: name.into(),
            smiles: smiles.into(),
            cas: cas.map(str::to_string),
        };
        let report = a.join_smiles(&[
            source("acetylsalicylic acid", "CC(=O)Oc1ccccc1C(=O)O", None),
            source("ASPIRIN", "CC(=O)Oc1ccccc1C(=O)O", None),
            // The CAS number wins over a name that would not match.
            source("1,3,7-trimethylxanthine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", Some("58-08-2")),
        ]);
        assert_eq!((report.by_cas, report.by_name, report.kept), (1, 2, 0));
        assert_eq!(report.unmatched, vec!["Nothing known".to_string(), "DMSO".to_string()]);
        assert_eq!(a.smiles(Split::Train, "1"), Some("CC(=O)Oc1ccccc1C(=O)O"));
        assert!(a.smiles(Split::Query, "2").unwrap().starts_with("Cn1"));
        assert_eq!(a.smiles(Split::Novel, "2"), Some("CC(=O)Oc1ccccc1C(=O)O"));
        assert_eq!(a.drug_name(Split::Novel, "2"), "Aspirin");
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("annotation.csv");
        std::fs::write(&path, a.to_csv()).unwrap();
        let back = Annotation::read_csv(&path).unwrap();
        assert_eq!((back.drugs, back.novel), (a.drugs, a.novel));
    }

    #[test]
    fn the_published_columns_read_as_mitoreid_reads_them() {
        let t = table(
            "index,name,cas,moa_id,moa_choose,common_moa,target\n\
             dmso,DMSO,67-68-5,unknown,0,,\n\
             1,Aspirin,50-78-2,4,1,COX inhibitor,PTGS1\n\
             2,Mystery,,,0,,\n\
             3,Other,,7,0,kinase inhibitor,\n",
        )
        .unwrap();
        assert_eq!(t["dmso"].drug_id, 0);
        assert!(t["dmso"].is_control() && !t["1"].is_control());
        assert_eq!((t["1"].drug_id, t["1"].moa_id, t["1"].moa_task_id()), (1, Some(4), Some(4)));
        assert_eq!(t["1"].moa.as_deref(), Some("COX inhibitor"));
        assert_eq!((t["2"].moa_id, t["dmso"].moa_id), (None, None));
        // Known MoA, but not chosen for the MoA task.
        assert_eq!((t["3"].moa_id, t["3"].moa_task_id()), (Some(7), None));
        let e = table("index,moa_id,moa_choose\n1,2,yes\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("moa_choose"), "{e}");
        let e = table("index,moa_id\n1,two\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("moa_id"), "{e}");
        let e = table("index,name\n1,a\n").unwrap_err().to_string();
        assert!(e.contains("moa_id") && e.contains("index, name"), "{e}");
    }
}
