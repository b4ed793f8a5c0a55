//! The protocol against hand-computed cases and a naive full-sort
//! implementation.

use molclip_eval::reid::for_each_distance_block;
use molclip_eval::{evaluate, Embeddings, EvalError, Metadata, NO_MOA};
use proptest::prelude::*;

fn at_angles(degrees: &[f64]) -> Embeddings {
    let rows: Vec<f64> = degrees.iter().flat_map(|d| [d.to_radians().cos(), d.to_radians().sin()]).collect();
    Embeddings::from_rows(2, &rows).unwrap()
}

fn meta(rows: &[(u32, u32, u32)]) -> Metadata {
    Metadata {
        replicate: rows.iter().map(|r| r.0).collect(),
        drug: rows.iter().map(|r| r.1).collect(),
        moa: rows.iter().map(|r| r.2).collect(),
    }
}

#[test]
fn hand_computed_exclusion_ap_and_cmc() {
    // Query: replicate 0, drug 0, MoA 0, at angle 0.
    let q = at_angles(&[0.0]);
    let qm = meta(&[(0, 0, 0)]);
    let g = at_angles(&[10.0, 20.0, 30.0, 40.0, 50.0]);
    let gm = meta(&[
        (0, 0, 0), // same replicate and drug: removed
        (1, 1, 1), // other drug, other MoA
        (1, 0, 0), // same drug, other replicate
        (0, 2, 0), // same MoA, other drug
        (2, 0, 0), // same drug, other replicate
    ]);
    let e = evaluate(&q, &qm, &g, &gm, 50).unwrap();
    // Drug: matches at ranks 2 and 4 of (g1, g2, g3, g4).
    assert!((e.drug.map - 100.0 * (1.0 / 2.0 + 2.0 / 4.0) / 2.0).abs() < 1e-12, "{}", e.drug.map);
    assert_eq!((e.drug.rank1, e.drug.rank5, e.drug.valid_queries), (0.0, 100.0, 1));
    assert_eq!(e.drug.cmc[0..2], [0.0, 100.0]);
    // MoA: matches at ranks 2, 3, 4.
    let expected = 100.0 * (1.0 / 2.0 + 2.0 / 3.0 + 3.0 / 4.0) / 3.0;
    assert!((e.moa.map - expected).abs() < 1e-12, "{} vs {expected}", e.moa.map);
    assert_eq!(e.moa.cmc.len(), 50);
}

#[test]
fn ties_follow_gallery_order() {
    let q = at_angles(&[0.0]);
    let qm = meta(&[(0, 0, 0)]);
    let g = at_angles(&[30.0, 30.0]);
    // Non-match first: the tied match ranks second.
    let e = evaluate(&q, &qm, &g, &meta(&[(1, 5, 5), (1, 0, 0)]), 50).unwrap();
    assert_eq!(e.drug.map, 50.0);
    assert_eq!(e.drug.rank1, 0.0);
    // Match first: it ranks first.
    let e = evaluate(&q, &qm, &g, &meta(&[(1, 0, 0), (1, 5, 5)]), 50).unwrap();
    assert_eq!(e.drug.map, 100.0);
    assert_eq!(e.drug.rank1, 100.0);
}

#[test]
fn queries_without_remaining_matches_are_skipped_and_none_left_is_an_error() {
    let q = at_angles(&[0.0, 90.0]);
    // Query 0's only drug match shares its replicate: skipped for drug, valid for MoA.
    let qm = meta(&[(0, 0, 0), (1, 1, 1)]);
    let g = at_angles(&[5.0, 60.0, 80.0]);
    let gm = meta(&[(0, 0, 0), (0, 1, 1), (2, 3, 0)]);
    let e = evaluate(&q, &qm, &g, &gm, 50).unwrap();
    assert_eq!(e.drug.valid_queries, 1);
    // Query 1 (90 deg) ranks g2 (10 deg away), then its drug match g1 (30 deg away).
    assert_eq!(e.drug.ap, vec![None, Some(0.5)]);
    assert_eq!(e.moa.valid_queries, 2);
    // Query 0 for MoA: g0 removed, ranking g1 (60 deg, MoA 1), g2 (80 deg, MoA 0): AP 1/2.
    assert_eq!(e.moa.ap[0], Some(0.5));

    let only = meta(&[(0, 0, 0)]);
    let err = evaluate(&at_angles(&[0.0]), &only, &at_angles(&[1.0]), &only, 50).unwrap_err();
    assert!(matches!(err, EvalError::NoValidQuery { .. }), "{err}");
}

#[test]
fn bad_features_are_refused_with_their_row() {
    let e = Embeddings::from_rows(2, &[1.0, 0.0, f64::NAN, 1.0]).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("not finite"), "{e}");
    let e = Embeddings::from_rows(2, &[1.0, 0.0, 0.0, 0.0]).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("zero"), "{e}");
    let e = Embeddings::from_rows(2, &[f64::INFINITY, 0.0]).unwrap_err().to_string();
    assert!(e.contains("row 0"), "{e}");
    let empty = Embeddings::empty(2);
    let err =
        evaluate(&empty, &Metadata::default(), &at_angles(&[0.0]), &meta(&[(0, 0, 0)]), 50).unwrap_err().to_string();
    assert!(err.contains("empty query"), "{err}");
}

#[test]
fn distances_are_one_minus_cosine() {
    let q = Embeddings::from_rows(3, &[1.0, 2.0, 2.0, 0.0, 0.0, 5.0]).unwrap();
    let g = Embeddings::from_rows(3, &[2.0, 0.0, 0.0, 0.0, 3.0, 4.0]).unwrap();
    let mut all = Vec::new();
    for_each_distance_block(&q, &g, |_, block| all.extend_from_slice(block)).unwrap();
    let expected = [1.0 - 1.0 / 3.0, 1.0 - (6.0 + 8.0) / 15.0, 1.0, 1.0 - 4.0 / 5.0];
    for (a, b) in all.iter().zip(expected) {
        assert!((a - b).abs() < 1e-12, "{all:?}");
    }
    // Features of different widths are refused before any product is formed.
    let narrow = Embeddings::from_rows(2, &[1.0, 0.0]).unwrap();
    let e = for_each_distance_block(&q, &narrow, |_, _| panic!("no block")).unwrap_err().to_string();
    assert!(e.contains("3-d") && e.contains("2-d"), "{e}");
}

/// Market-1501 evaluation with a full stable argsort, per query.
fn naive(dist: &[Vec<f64>], q: &Metadata, g: &Metadata, drug_task: bool) -> (Vec<Option<f64>>, Vec<Option<usize>>) {
    let mut aps = Vec::new();
    let mut firsts = Vec::new();
    for (i, row) in dist.iter().enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap());
        let label = |j: usize| if drug_task { g.drug[j] } else { g.moa[j] };
        let ql = if drug_task { q.drug[i] } else { q.moa[i] };
        // MoA recognition leaves out the videos without a MoA, as queries and as gallery items.
        let in_task = |j: usize| drug_task || g.moa[j] != NO_MOA;
        let kept: Vec<bool> = if !drug_task && ql == NO_MOA {
            Vec::new()
        } else {
            order
                .iter()
                .filter(|&&j| !(g.replicate[j] == q.replicate[i] && g.drug[j] == q.drug[i]) && in_task(j))
                .map(|&j| label(j) == ql)
                .collect()
        };
        if !kept.iter().any(|&m| m) {
            aps.push(None);
            firsts.push(None);
            continue;
        }
        let (mut hits, mut ap) = (0, 0.0);
        for (pos, &m) in kept.iter().enumerate() {
            if m {
                hits += 1;
                ap += hits as f64 / (pos + 1) as f64;
            }
        }
        aps.push(Some(ap / hits as f64));
        firsts.push(kept.iter().position(|&m| m).map(|p| p + 1));
    }
    (aps, firsts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn counting_ranks_equals_the_full_stable_sort(
        nq in 1usize..12,
        ng in 1usize..700,
        dim in 1usize..4,
        seed in any::<u64>(),
        fine in any::<bool>(),
        drugs in 5u64..80,
        moa_of_drug in any::<bool>(),
    ) {
        // Coarse integer coordinates make exact ties common; fine ones spread the distances.
        let spread = if fine { 2001 } else { 3 };
        let mut state = seed | 1;
        let mut next = |m: u64| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state % m };
        let mut vec_rows = |n: usize| -> Vec<f64> {
            let mut v = Vec::new();
            for _ in 0..n {
                let row: Vec<f64> = (0..dim).map(|_| next(spread) as f64 - (spread / 2) as f64).collect();
                if row.iter().all(|x| *x == 0.0) { v.extend((0..dim).map(|k| if k == 0 { 1.0 } else { 0.0 })); } else { v.extend(row); }
            }
            v
        };
        let (qr, gr) = (vec_rows(nq), vec_rows(ng));
        let q = Embeddings::from_rows(dim, &qr).unwrap();
        let g = Embeddings::from_rows(dim, &gr).unwrap();
        let mut labels = |n: usize| Metadata {
            replicate: (0..n).map(|_| next(3) as u32).collect(),
            // Few drugs give many true matches per query, many give few or none left after the
            // query's own replicate is excluded.
            drug: (0..n).map(|_| next(drugs) as u32).collect(),
            moa: (0..n).map(|_| 0).collect(),
        };
        let (mut qm, mut gm) = (labels(nq), labels(ng));
        // MoA is a function of the drug, as in a real screen, where drug 4 has none; or, where
        // labels are inconsistent, drawn for each video (a third of them without one), so that a
        // query's excluded videos may have another MoA than its own.
        for m in [&mut qm, &mut gm] {
            m.moa = if moa_of_drug {
                m.drug.iter().map(|d| if *d == 4 { NO_MOA } else { d % 2 }).collect()
            } else {
                m.drug.iter().map(|_| match next(3) { 2 => NO_MOA, moa => moa as u32 }).collect()
            };
        }
        let mut dist = Vec::new();
        for_each_distance_block(&q, &g, |_, block| dist.extend(block.chunks(ng).map(|r| r.to_vec()))).unwrap();
        match evaluate(&q, &qm, &g, &gm, 50) {
            Ok(e) => {
                for (task, drug_task) in [(&e.drug, true), (&e.moa, false)] {
                    let (aps, firsts) = naive(&dist, &qm, &gm, drug_task);
                    prop_assert_eq!(task.ap.len(), aps.len());
                    for (a, b) in task.ap.iter().zip(&aps) {
                        match (a, b) {
                            (Some(x), Some(y)) => prop_assert!((x - y).abs() < 1e-12, "{} vs {}", x, y),
                            (None, None) => {}
                            _ => prop_assert!(false, "validity differs: {:?} vs {:?}", a, b),
                        }
                    }
                    let valid: Vec<usize> = firsts.iter().flatten().copied().collect();
                    for k in [1usize, 5, 10] {
                        let cmc = 100.0 * valid.iter().filter(|&&f| f <= k).count() as f64 / valid.len() as f64;
                        prop_assert!((task.cmc[k - 1] - cmc).abs() < 1e-9);
                    }
                }
            }
            Err(EvalError::NoValidQuery { .. }) => {
                let (d, _) = naive(&dist, &qm, &gm, true);
                let (m, _) = naive(&dist, &qm, &gm, false);
                prop_assert!(d.iter().all(Option::is_none) || m.iter().all(Option::is_none));
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}
