//! `.npy` arrays (format versions 1, 2 and 3): 2-D float32 or float64,
//! either byte order, C or Fortran order. Read into row-major f64.

use std::io::Write;
use std::path::Path;

use crate::error::EvalError;

/// A row-major `[rows, cols]` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

pub fn read_npy(path: &Path) -> Result<Matrix, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::file(path, format!("cannot read: {e}")))?;
    parse_npy(&bytes).map_err(|reason| EvalError::file(path, reason))
}

pub fn parse_npy(bytes: &[u8]) -> Result<Matrix, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (missing \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (header_len, offset) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!(".npy format version {v} is not supported (expected 1, 2 or 3)")),
    };
    let header = bytes
        .get(offset..offset + header_len)
        .ok_or("truncated .npy header")
        .map(|h| String::from_utf8_lossy(h).into_owned())?;
    let descr = header_value(&header, "descr").ok_or("no 'descr' in the .npy header")?;
    let descr = descr.trim_start_matches(['\'', '"']);
    let dtype: String = descr.chars().take_while(|c| *c != '\'' && *c != '"').collect();
    let fortran = header_value(&header, "fortran_order").ok_or("no 'fortran_order' in the .npy header")?.starts_with("True");
    let shape_text = header_value(&header, "shape").ok_or("no 'shape' in the .npy header")?;
    let shape_text = &shape_text[1..shape_text.find(')').ok_or("bad shape in the .npy header")?];
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape entry {s:?}")))
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match shape.as_slice() {
        [r, c] => (*r, *c),
        other => return Err(format!("shape {other:?}: expected a 2-D array [N, D]")),
    };
    let (size, big, float32) = match dtype.as_str() {
        "<f4" | "|f4" => (4, false, true),
        ">f4" => (4, true, true),
        "<f8" | "|f8" => (8, false, false),
        ">f8" => (8, true, false),
        other => return Err(format!("dtype {other:?}: expected float32 or float64")),
    };
    let body = &bytes[offset + header_len..];
    let n = rows.checked_mul(cols).ok_or("shape overflows")?;
    if body.len() < n * size {
        return Err(format!("data holds {} bytes, the shape [{rows}, {cols}] needs {}", body.len(), n * size));
    }
    let values: Vec<f64> = body[..n * size]
        .chunks_exact(size)
        .map(|c| match (float32, big) {
            (true, false) => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            (true, true) => f32::from_be_bytes(c.try_into().unwrap()) as f64,
            (false, false) => f64::from_le_bytes(c.try_into().unwrap()),
            (false, true) => f64::from_be_bytes(c.try_into().unwrap()),
        })
        .collect();
    let data = if fortran {
        let mut out = vec![0.0; n];
        for c in 0..cols {
            for r in 0..rows {
                out[r * cols + c] = values[c * rows + r];
            }
        }
        out
    } else {
        values
    };
    Ok(Matrix { rows, cols, data })
}

/// Write a float32 `.npy` (version 1.0, C order) atomically.
pub fn write_npy_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<(), EvalError> {
    assert_eq!(data.len(), rows * cols, "npy data does not match its shape");
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Pad so the data starts on a 64-byte boundary, newline-terminated.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let tmp = path.with_extension(format!("npy.tmp-{}", std::process::id()));
    let io = |e: std::io::Error| EvalError::file(path, e.to_string());
    std::fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(version: u8, descr: &str, fortran: bool, shape: &str, body: &[u8]) -> Vec<u8> {
        let header = format!("{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n", if fortran { "True" } else { "False" });
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
        for version in [1, 2, 3] {
            let m = parse_npy(&npy(version, "<f4", false, "(2, 3)", &le32)).unwrap();
            assert_eq!((m.rows, m.cols, m.data.as_slice()), (2, 3, &vals[..]));
        }
        let m = parse_npy(&npy(1, ">f8", false, "(3, 2)", &be64)).unwrap();
        assert_eq!((m.rows, m.cols, m.data.as_slice()), (3, 2, &vals[..]));
        // Fortran order: column-major on disk.
        let m = parse_npy(&npy(1, "<f4", true, "(2, 3)", &le32)).unwrap();
        assert_eq!(m.data, vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(parse_npy(b"hello").unwrap_err().contains("magic"));
        assert!(parse_npy(&npy(1, "<i8", false, "(1, 1)", &[0; 8])).unwrap_err().contains("float32 or float64"));
        assert!(parse_npy(&npy(1, "<f4", false, "(4,)", &[0; 16])).unwrap_err().contains("2-D"));
        assert!(parse_npy(&npy(1, "<f4", false, "(2, 2)", &[0; 8])).unwrap_err().contains("needs 16"));
    }

    #[test]
    fn writes_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        write_npy_f32(&path, 2, 2, &[0.5, -1.0, 2.0, 3.25]).unwrap();
        let m = read_npy(&path).unwrap();
        assert_eq!(m.data, vec![0.5, -1.0, 2.0, 3.25]);
        assert_eq!(std::fs::read(&path).unwrap().len() % 64, 16);
    }
}
