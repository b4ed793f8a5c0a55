//! SHA-256 digests, as lowercase hex: what a checkpoint's checksums and a dataset's
//! fingerprint are made of.

use sha2::Digest as _;

/// An incremental SHA-256.
#[derive(Clone, Default)]
pub struct Digest(sha2::Sha256);

impl Digest {
    /// An empty digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.0.update(bytes.as_ref());
        self
    }

    /// Adds a field: its length first, so that fields cannot run into each other.
    pub fn field(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        let bytes = bytes.as_ref();
        self.update((bytes.len() as u64).to_le_bytes()).update(bytes)
    }

    /// The digest, as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.0.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The SHA-256 of `bytes`, as hex.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    Digest::new().update(bytes).hex()
}

/// The SHA-256 of a file's content, as hex, read in blocks.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut digest = Digest::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(digest.hex());
        }
        digest.update(&block[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // FIPS 180-2 test vectors.
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Digest::new().update(b"a").update(b"bc").hex(), sha256_hex(b"abc"));
        assert_ne!(Digest::new().field(b"ab").field(b"c").hex(), Digest::new().field(b"a").field(b"bc").hex());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(b"abc"));
    }
}
