//! `featurize` and `morgan`: SMILES to the records of `molclip chem featurize`, and to dense
//! Morgan fingerprints.

use molclip_chem::{featurize_smiles, FeatureRecord, FeaturizeOptions, FingerprintConfig, FragmentPolicy, Molecule};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use pyo3::prelude::*;
use rayon::prelude::*;

use crate::{py_err, py_msg};

/// A failed row: its index, its SMILES and why.
type RowError = (usize, String, String);

fn options(radius: u32, bits: usize, fragments: &str) -> PyResult<FeaturizeOptions> {
    let fragments: FragmentPolicy = fragments.parse().map_err(py_msg)?;
    let options = FeaturizeOptions { fingerprint: FingerprintConfig { radius, n_bits: bits }, fragments };
    // A bad radius or width is refused once, not once per row.
    options.fingerprint.validate().map_err(py_err)?;
    Ok(options)
}

/// `errors="raise"`: the first failure as an exception naming its index; `"skip"`: none.
fn check(failures: &[RowError], errors: &str, total: usize) -> PyResult<()> {
    match (errors, failures.first()) {
        // The reason quotes the SMILES.
        ("raise", Some((i, _, reason))) => Err(py_msg(format!(
            "smiles[{i}]: {reason} ({} of {total} SMILES failed; errors=\"skip\" keeps the others)",
            failures.len()
        ))),
        ("raise" | "skip", _) => Ok(()),
        (other, _) => Err(py_msg(format!("errors=\"{other}\": expected \"raise\" or \"skip\""))),
    }
}

/// The records of `molclip chem featurize` (one JSON object each, as its JSONL lines) for
/// `smiles`, named by `names` (default: the SMILES), as a JSON array; and the rows that
/// failed. Parallel, without the GIL.
#[pyfunction]
#[pyo3(signature = (smiles, names=None, radius=2, bits=2048, fragments="largest", errors="raise"))]
pub fn featurize(
    py: Python<'_>,
    smiles: Vec<String>,
    names: Option<Vec<String>>,
    radius: u32,
    bits: usize,
    fragments: &str,
    errors: &str,
) -> PyResult<(String, Vec<RowError>)> {
    let options = options(radius, bits, fragments)?;
    if let Some(n) = names.as_ref().filter(|n| n.len() != smiles.len()) {
        return Err(py_msg(format!("{} names for {} SMILES: give one name per SMILES", n.len(), smiles.len())));
    }
    let (json, failures) = py.detach(|| {
        let records: Vec<FeatureRecord> = smiles
            .par_iter()
            .enumerate()
            .map(|(i, s)| featurize_smiles(names.as_ref().map_or(s, |n| &n[i]), s, &options))
            .collect();
        let failures: Vec<RowError> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                FeatureRecord::Err { smiles, error, .. } => Some((i, smiles.clone(), error.clone())),
                FeatureRecord::Ok { .. } => None,
            })
            .collect();
        let values: Vec<serde_json::Value> = records.iter().map(FeatureRecord::to_json).collect();
        (serde_json::Value::Array(values).to_string(), failures)
    });
    check(&failures, errors, smiles.len())?;
    Ok((json, failures))
}

/// Dense Morgan fingerprints, `uint8 [n, bits]` (0 or 1), bit-identical to RDKit's Morgan
/// generator; a failed row is all 255 (`np.uint8(-1)`). Parallel, without the GIL.
#[pyfunction]
#[pyo3(signature = (smiles, radius=2, bits=2048, fragments="largest", errors="raise"))]
pub fn morgan<'py>(
    py: Python<'py>,
    smiles: Vec<String>,
    radius: u32,
    bits: usize,
    fragments: &str,
    errors: &str,
) -> PyResult<(Bound<'py, PyArray2<u8>>, Vec<RowError>)> {
    let options = options(radius, bits, fragments)?;
    let (dense, failures) = py.detach(|| {
        let rows: Vec<Result<Vec<u32>, String>> = smiles
            .par_iter()
            .map(|s| {
                Molecule::parse_with(s, options.fragments)
                    .and_then(|m| m.morgan(&options.fingerprint))
                    .map(|fp| fp.on_bits())
                    .map_err(|e| e.to_string())
            })
            .collect();
        let mut dense = vec![0u8; smiles.len() * bits];
        let mut failures = Vec::new();
        for (i, (row, out)) in rows.into_iter().zip(dense.chunks_mut(bits)).enumerate() {
            match row {
                Ok(on) => on.into_iter().for_each(|b| out[b as usize] = 1),
                Err(reason) => {
                    out.fill(u8::MAX);
                    failures.push((i, smiles[i].clone(), reason));
                }
            }
        }
        (dense, failures)
    });
    check(&failures, errors, smiles.len())?;
    let array = Array2::from_shape_vec((smiles.len(), bits), dense).expect("n x bits values");
    Ok((array.into_pyarray(py), failures))
}
