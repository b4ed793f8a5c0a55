//! `.npy` arrays, their headers through npyz (format versions 1, 2 and 3): 2-D float32 or
//! float64, either byte order, C or Fortran order, read row-major in the file's precision;
//! float32 written.

use std::io::Read;
use std::path::Path;

use npyz::WriterBuilder;

use crate::error::EvalError;

/// A row-major `[rows, cols]` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Values, row-major.
    pub data: Values,
}

/// A matrix's values in the precision of its file: float32 features stay float32 (half the
/// memory) until each row is widened as it is normalised.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// From a float32 file.
    F32(Vec<f32>),
    /// From a float64 file.
    F64(Vec<f64>),
}

impl Values {
    /// Every value, widened to f64.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Values::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Values::F64(v) => v.clone(),
        }
    }
}

/// Reads a 2-D float32 or float64 `.npy` file into a row-major matrix of its precision;
/// errors name the file and what was expected.
pub fn read_npy(path: &Path) -> Result<Matrix, EvalError> {
    let io = |source| EvalError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    read_matrix(std::io::BufReader::new(file), len).map_err(|e| EvalError::file(path, e.to_string()))
}

/// Why bytes are not a `.npy` matrix molclip can read.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// npyz could not parse the header or the data.
    #[error("not a readable .npy file: {0}")]
    Format(#[from] std::io::Error),
    /// A shape other than `[N, D]`.
    #[error("shape {0:?}: expected a 2-D array [N, D]")]
    Shape(Vec<u64>),
    /// A dtype other than float32 or float64.
    #[error("dtype {0}: expected float32 or float64")]
    DType(String),
    /// Fewer bytes of data than the shape needs (checked before anything is allocated).
    #[error("data holds at most {have} bytes, the shape [{rows}, {cols}] needs {need}")]
    Truncated {
        /// Rows in the header's shape.
        rows: usize,
        /// Columns in the header's shape.
        cols: usize,
        /// Bytes the shape needs.
        need: usize,
        /// Bytes in the whole file.
        have: usize,
    },
}

/// [`read_npy`] on bytes in memory.
pub fn parse_npy(bytes: &[u8]) -> Result<Matrix, NpyError> {
    read_matrix(bytes, bytes.len())
}

/// Bytes of the data decoded at a time by [`read_matrix`]: the file is never held whole, so
/// that reading takes the matrix's memory and this much more, not twice the matrix's (146 MB
/// more for MitoReID's 71,200 x 512 float32 embeddings).
const READ_CHUNK: usize = 1 << 20;

/// A matrix from `reader`, a `.npy` file of `len` bytes in all (the shape is checked against
/// it before anything is allocated for the data).
fn read_matrix(reader: impl Read, len: usize) -> Result<Matrix, NpyError> {
    let file = npyz::NpyFile::new(reader)?;
    let (rows, cols) = match file.shape() {
        [r, c] => (*r as usize, *c as usize),
        other => return Err(NpyError::Shape(other.to_vec())),
    };
    let dtype = match file.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => return Err(NpyError::DType(other.descr())),
    };
    let size = match dtype.trim_start_matches(['<', '>', '|', '=']) {
        "f4" => 4,
        "f8" => 8,
        _ => return Err(NpyError::DType(format!("{dtype:?}"))),
    };
    let need = rows.checked_mul(cols).and_then(|n| n.checked_mul(size)).unwrap_or(usize::MAX);
    if need > len {
        return Err(NpyError::Truncated { rows, cols, need, have: len });
    }
    let fortran = file.order() == npyz::Order::Fortran;
    // `<` little-endian, `>` big-endian, `=` or `|` this machine's order.
    let big = dtype.starts_with('>') || (cfg!(target_endian = "big") && !dtype.starts_with('<'));
    // The header is read; what follows it is the raw data, decoded here a chunk at a time
    // instead of through npyz's reader.
    let mut data = file.into_inner();
    let data = if size == 4 {
        let v = decode(&mut data, need, |b| if big { f32::from_be_bytes(b) } else { f32::from_le_bytes(b) })?;
        Values::F32(if fortran { row_major(&v, rows, cols) } else { v })
    } else {
        let v = decode(&mut data, need, |b| if big { f64::from_be_bytes(b) } else { f64::from_le_bytes(b) })?;
        Values::F64(if fortran { row_major(&v, rows, cols) } else { v })
    };
    Ok(Matrix { rows, cols, data })
}

/// The values of the next `need` bytes of `reader`, `N` bytes each, read [`READ_CHUNK`] bytes
/// at a time.
fn decode<const N: usize, T>(
    reader: &mut impl Read,
    need: usize,
    value: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>, NpyError> {
    let mut values = Vec::with_capacity(need / N);
    let mut chunk = Vec::with_capacity(READ_CHUNK.min(need));
    let mut done = 0;
    while done < need {
        let want = (need - done).min(READ_CHUNK);
        chunk.clear();
        let got = reader.by_ref().take(want as u64).read_to_end(&mut chunk)?;
        if got < want {
            let reason = format!("the data ends after {} of the {need} bytes the shape needs", done + got);
            return Err(NpyError::Format(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, reason)));
        }
        values.extend(chunk.chunks_exact(N).map(|b| value(b.try_into().expect("chunks of N bytes"))));
        done += want;
    }
    Ok(values)
}

/// Column-major `[rows, cols]` values, row-major.
fn row_major<T: Copy + Default>(values: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); values.len()];
    for c in 0..cols {
        for r in 0..rows {
            out[r * cols + c] = values[c * rows + r];
        }
    }
    out
}

/// Writes a float32 `.npy` (C order) atomically.
pub fn write_npy_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<(), EvalError> {
    if data.len() != rows * cols {
        return Err(EvalError::Input(format!("{} values are not a [{rows}, {cols}] matrix", data.len())));
    }
    molclip_core::write_atomic_with(path, |tmp| {
        let io = |source| EvalError::Io { path: tmp.to_path_buf(), source };
        let mut file = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[rows as u64, cols as u64])
            .writer(&mut file)
            .begin_nd()
            .map_err(io)?;
        writer.extend(data.iter().copied()).map_err(io)?;
        writer.finish().map_err(io)?;
        file.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(version: u8, descr: &str, fortran: bool, shape: &str, body: &[u8]) -> Vec<u8> {
        let header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
            if fortran { "True" } else { "False" }
        );
        let mut b = b"\x93NUMPY".to_vec();
        b.push(version);
        b.push(0);
        if version == 1 {
            b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn reads_every_version_dtype_and_order() {
        let vals = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let le32: Vec<u8> = vals.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
        let be64: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
        let be32: Vec<u8> = vals.iter().flat_map(|v| (*v as f32).to_be_bytes()).collect();
        let le64: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        for version in [1, 2, 3] {
            let m = parse_npy(&npy(version, "<f4", false, "(2, 3)", &le32)).unwrap();
            assert_eq!((m.rows, m.cols, m.data.to_f64()), (2, 3, vals.to_vec()));
            assert!(matches!(m.data, Values::F32(_)), "float32 stays float32");
        }
        for (descr, body) in [(">f8", &be64), ("<f8", &le64), (">f4", &be32)] {
            let m = parse_npy(&npy(1, descr, false, "(3, 2)", body)).unwrap();
            assert_eq!((m.rows, m.cols, m.data.to_f64()), (3, 2, vals.to_vec()), "{descr}");
        }
        // Fortran order: column-major on disk.
        for (descr, body) in [("<f4", &le32), ("<f8", &le64)] {
            let m = parse_npy(&npy(1, descr, true, "(2, 3)", body)).unwrap();
            assert_eq!(m.data.to_f64(), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0], "{descr}");
        }
        // Bytes past the data are not values.
        let mut longer = le32.clone();
        longer.extend_from_slice(&[0xff; 8]);
        assert_eq!(parse_npy(&npy(1, "<f4", false, "(2, 3)", &longer)).unwrap().data.to_f64(), vals.to_vec());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let err = |b: &[u8]| parse_npy(b).unwrap_err().to_string();
        assert!(err(b"hello").contains("not a readable .npy"), "{}", err(b"hello"));
        assert!(err(&npy(1, "<i8", false, "(1, 1)", &[0; 8])).contains("float32 or float64"));
        assert!(err(&npy(1, "<f4", false, "(4,)", &[0; 16])).contains("2-D"));
        // A shape the data cannot hold is refused before anything is allocated for it.
        assert!(err(&npy(1, "<f4", false, "(2, 2)", &[0; 8])).contains("not a readable"));
        assert!(err(&npy(1, "<f4", false, "(100000000000, 512)", &[0; 8])).contains("needs"));
    }

    #[test]
    fn writes_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        write_npy_f32(&path, 2, 2, &[0.5, -1.0, 2.0, 3.25]).unwrap();
        let m = read_npy(&path).unwrap();
        assert_eq!(m.data, Values::F32(vec![0.5, -1.0, 2.0, 3.25]));
        assert_eq!(std::fs::read(&path).unwrap().len() % 64, 16);
    }

    /// A file of several read chunks comes back whole, and one cut short says how many of the
    /// bytes the shape needs it held, counted across the chunks, and names the file.
    #[test]
    fn reads_a_file_chunk_by_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let (rows, cols) = (1000, 700);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.25 - 3.0).collect();
        assert!(values.len() * 4 > 2 * READ_CHUNK);
        write_npy_f32(&path, rows, cols, &values).unwrap();
        assert_eq!(read_npy(&path).unwrap(), Matrix { rows, cols, data: Values::F32(values) });
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len - 6).unwrap();
        let err = read_npy(&path).unwrap_err().to_string();
        let need = rows * cols * 4;
        assert!(err.contains(&format!("ends after {} of the {need} bytes", need - 6)), "{err}");
        assert!(err.contains("x.npy"), "{err}");
    }
}
