//! Random clustered embeddings with a screen's structure (MoAs, drugs,
//! replicates, query and gallery videos), for benchmarks and cross-checks.

/// One synthetic video: its set, replicate, drug and MoA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticRow {
    /// Query or gallery.
    pub set: molclip_core::Split,
    /// Replicate name.
    pub replicate: String,
    /// Drug name.
    pub drug: String,
    /// MoA name.
    pub moa: String,
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// `n` query and `n` gallery videos of `dim` features: 38 MoAs, drugs of
/// 4 videos per replicate and set, 3 replicates; each video is its MoA's
/// centre, plus its drug's offset, plus noise. Row-major f32.
pub fn clustered_embeddings(n: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<SyntheticRow>) {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let n_moas = 38;
    let per_drug = 12; // 4 videos x 3 replicates, in each of query and gallery
    let n_drugs = n.div_ceil(per_drug);
    let moa_centres: Vec<Vec<f32>> = (0..n_moas).map(|_| (0..dim).map(|_| rng.normal()).collect()).collect();
    let mut features = Vec::with_capacity(2 * n * dim);
    let mut rows = Vec::with_capacity(2 * n);
    for set in [molclip_core::Split::Query, molclip_core::Split::Gallery] {
        let mut made = 0;
        for drug in 0..n_drugs {
            let moa = drug % n_moas;
            // The same drug offset in both sets: derived from the drug id alone.
            let mut drug_rng = XorShift((seed ^ (drug as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)) | 1);
            let offset: Vec<f32> = (0..dim).map(|_| 0.5 * drug_rng.normal()).collect();
            for k in 0..per_drug {
                if made == n {
                    break;
                }
                for d in 0..dim {
                    features.push(0.4 * moa_centres[moa][d] + offset[d] + 1.6 * rng.normal());
                }
                rows.push(SyntheticRow {
                    set,
                    replicate: format!("l{}", k % 3 + 1),
                    drug: format!("d{drug}"),
                    moa: format!("m{moa}"),
                });
                made += 1;
            }
        }
    }
    (features, rows)
}

/// The metadata CSV of [`clustered_embeddings`].
pub fn metadata_csv(rows: &[SyntheticRow]) -> String {
    let mut out = String::from("set,replicate,drug,moa\n");
    for r in rows {
        out.push_str(&format!("{},{},{},{}\n", r.set, r.replicate, r.drug, r.moa));
    }
    out
}
