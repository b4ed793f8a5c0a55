//! Hand-computed cases for the losses and the optimisers, and exact resume of optimiser state.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use molclip::losses::{accuracy, batch_hard_triplet, clip_loss, cross_entropy, inverse_temperature};
use molclip::optim::{clip_grad_norm, Optimizer, OptimizerConfig, OptimizerKind};

fn t2(rows: &[&[f32]]) -> Tensor {
    let c = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), c), &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

#[test]
fn clip_loss_by_hand() {
    // Two drugs; videos 0 and 1 are drug 0, video 2 drug 1. Unit vectors on the axes.
    let videos = t2(&[&[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0]]);
    let molecules = t2(&[&[1.0, 0.0], &[0.0, 1.0]]);
    let s = 2.0f32;
    let scale = Tensor::new(s.ln(), &Device::Cpu).unwrap();
    let loss = clip_loss(&videos, &molecules, &[0, 0, 1], &[0, 1], &scale, 100.0).unwrap();
    // Video to molecule: each video has logits (s, 0) or (0, s), target its own drug.
    let l_v = (1.0 + (-s).exp()).ln();
    // Molecule 0 to videos: logits (s, s, 0), two positives with weight 1/2 each.
    let lse0 = (2.0 * s.exp() + 1.0).ln();
    let l_m0 = lse0 - s;
    // Molecule 1 to videos: logits (0, 0, s), one positive.
    let lse1 = (2.0 + s.exp()).ln();
    let l_m1 = lse1 - s;
    let expected = 0.5 * (l_v + 0.5 * (l_m0 + l_m1));
    assert!((scalar(&loss) - expected).abs() < 1e-6, "{} vs {expected}", scalar(&loss));
    // The inverse temperature is clamped at the maximum.
    assert!(
        (scalar(&inverse_temperature(&Tensor::new(10f32, &Device::Cpu).unwrap(), 100.0).unwrap()) - 100.0).abs() < 1e-3
    );
    // A video whose drug has no molecule in the batch is an error, not a silent zero.
    assert!(clip_loss(&videos, &molecules, &[0, 0, 2], &[0, 1], &scale, 100.0).is_err());
}

#[test]
fn batch_hard_triplet_by_hand() {
    // 1-D features: identity 0 at 0 and 1, identity 1 at 3 and 3.5.
    let f = t2(&[&[0.0], &[1.0], &[3.0], &[3.5]]);
    let loss = batch_hard_triplet(&f, &[0, 0, 1, 1], 0.3).unwrap();
    // Anchor 0: farthest positive 1, nearest negative 3 → max(0, 1 - 3 + 0.3) = 0.
    // Anchor 1: 1 vs 2 → 0. Anchor 2: 0.5 vs 2 → 0. Anchor 3: 0.5 vs 2.5 → 0.
    assert!(scalar(&loss).abs() < 1e-3);
    let loss = batch_hard_triplet(&f, &[0, 1, 0, 1], 0.3).unwrap();
    // Anchor 0 (id 0: 0, 3): pos 3, neg min(1, 3.5) = 1 → 2.3. Anchor 1 (id 1: 1, 3.5): pos 2.5,
    // neg min(1, 2) = 1 → 1.8. Anchor 2: pos 3, neg min(2, 0.5) = 0.5 → 2.8. Anchor 3: pos 2.5,
    // neg min(3.5, 0.5) = 0.5 → 2.3.
    assert!((scalar(&loss) - (2.3 + 1.8 + 2.8 + 2.3) / 4.0).abs() < 1e-3, "{}", scalar(&loss));
    assert!(batch_hard_triplet(&f, &[1, 1, 1, 1], 0.3).is_err());
}

#[test]
fn cross_entropy_with_label_smoothing_by_hand() {
    // Equal logits: every target gets ln(C), smoothed or not.
    let logits = t2(&[&[0.5, 0.5, 0.5, 0.5]]);
    assert!((scalar(&cross_entropy(&logits, &[2], 0.1).unwrap()) - 4f32.ln()).abs() < 1e-6);
    // Two classes, logits (0, ln 3): p = (1/4, 3/4). Target 1, ε = 0.2: targets (0.1, 0.9).
    let logits = t2(&[&[0.0, 3f32.ln()]]);
    let expected = -(0.1 * 0.25f32.ln() + 0.9 * 0.75f32.ln());
    assert!((scalar(&cross_entropy(&logits, &[1], 0.2).unwrap()) - expected).abs() < 1e-6);
    assert!(cross_entropy(&logits, &[2], 0.2).is_err());
    assert_eq!(accuracy(&t2(&[&[0.0, 1.0], &[2.0, 1.0]]), &[1, 1]).unwrap(), 0.5);
}

#[test]
fn mitoreids_control_mislabels_rule_by_hand() {
    use molclip::losses::without_control_mislabels;
    // Control class 0. Rows 1 and 3 are treated drugs the classifier calls the control; row 0
    // is the control itself, called so rightly; row 4, a treated drug, is called another drug.
    let predicted = [0, 0, 2, 0, 1, 2];
    let labels = [0, 1, 2, 3, 2, 2];
    assert_eq!(without_control_mislabels(&predicted, &labels, 0, 5), Some(vec![0, 2, 4, 5]));
    assert_eq!(without_control_mislabels(&predicted, &labels, 0, 3), Some(vec![0, 2, 4, 5]));
    // MitoReID leaves them out only when fewer than the limit: two is not fewer than two.
    assert_eq!(without_control_mislabels(&predicted, &labels, 0, 2), None);
    // None called the control wrongly: every row stays.
    assert_eq!(without_control_mislabels(&[0, 1, 2], &[0, 1, 2], 0, 5), None);
    // What would be left holds a single identity (no negatives for the triplet): every row stays.
    assert_eq!(without_control_mislabels(&[0, 0, 2, 2], &[1, 1, 2, 2], 0, 5), None);
    // Another class as the control (the MoA stage numbers its classes its own way).
    assert_eq!(without_control_mislabels(&[3, 3, 1], &[1, 3, 2], 3, 5), Some(vec![1, 2]));
}

fn step_once(kind: OptimizerKind, steps: usize) -> Vec<f32> {
    let p = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
    let cfg = OptimizerConfig { kind, lr: 0.1, weight_decay: 0.01, ..OptimizerConfig::default() };
    let mut opt = Optimizer::new(vec![("p".into(), p.clone())], &cfg).unwrap();
    for _ in 0..steps {
        // loss = sum(p²)/2, gradient p.
        let grads = (p.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap().backward().unwrap();
        opt.step(&grads, 0.1).unwrap();
    }
    p.as_tensor().to_vec1().unwrap()
}

#[test]
fn adamw_and_nesterov_sgd_follow_pytorch_update_rules() {
    // AdamW, first step: p ← p(1 − lr·wd) − lr · m̂/(√v̂ + eps), with m̂ = g, v̂ = g².
    let got = step_once(OptimizerKind::AdamW, 1);
    for (p0, got) in [(1.0f64, got[0]), (-2.0, got[1])] {
        let expected = p0 * (1.0 - 0.1 * 0.01) - 0.1 * p0 / (p0.abs() + 1e-8);
        assert!((got as f64 - expected).abs() < 1e-6, "{got} vs {expected}");
    }
    // SGD with Nesterov momentum 0.9, two steps by hand.
    let got = step_once(OptimizerKind::Sgd, 2);
    for (p0, got) in [(1.0f64, got[0]), (-2.0, got[1])] {
        let g1 = p0 + 0.01 * p0;
        let b1 = g1;
        let p1 = p0 - 0.1 * (g1 + 0.9 * b1);
        let g2 = p1 + 0.01 * p1;
        let b2 = 0.9 * b1 + g2;
        let p2 = p1 - 0.1 * (g2 + 0.9 * b2);
        assert!((got as f64 - p2).abs() < 1e-6, "{got} vs {p2}");
    }
}

#[test]
fn optimizer_state_restores_exactly() {
    for kind in [OptimizerKind::AdamW, OptimizerKind::Sgd] {
        let cfg = OptimizerConfig { kind, ..OptimizerConfig::default() };
        let run = |resume_at: Option<usize>| -> Vec<f32> {
            let p = Var::from_tensor(&Tensor::new(&[0.3f32, -1.2, 2.0], &Device::Cpu).unwrap()).unwrap();
            let mut opt = Optimizer::new(vec![("w".into(), p.clone())], &cfg).unwrap();
            for step in 0..6 {
                if resume_at == Some(step) {
                    // Save, throw away, rebuild from the saved state.
                    let state: HashMap<String, Tensor> = opt.state_tensors().unwrap();
                    let saved = p.as_tensor().copy().unwrap();
                    let p2 = Var::from_tensor(&saved).unwrap();
                    p.set(p2.as_tensor()).unwrap();
                    opt = Optimizer::new(vec![("w".into(), p.clone())], &cfg).unwrap();
                    opt.load_state(&state).unwrap();
                }
                let loss = p.as_tensor().sqr().unwrap().sqr().unwrap().sum_all().unwrap();
                opt.step(&loss.backward().unwrap(), 0.01).unwrap();
            }
            p.as_tensor().to_vec1().unwrap()
        };
        assert_eq!(run(None), run(Some(3)), "{kind:?}");
    }
}

#[test]
fn gradient_clipping_bounds_the_global_norm() {
    let a = Var::from_tensor(&Tensor::new(&[3.0f32], &Device::Cpu).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::new(&[4.0f32], &Device::Cpu).unwrap()).unwrap();
    let loss =
        ((a.as_tensor().sqr().unwrap() + b.as_tensor().sqr().unwrap()).unwrap().sum_all().unwrap() * 0.5).unwrap();
    let mut grads = loss.backward().unwrap();
    let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let norm = clip_grad_norm(&mut grads, &params, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
    let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
    assert!(((ga * ga + gb * gb).sqrt() - 1.0).abs() < 1e-5);
}

/// Training folds clipping's coefficient into the update (`step_scaled`): over four steps
/// whose gradients exceed the bound and a fifth within it, both optimisers end with the bits of
/// scaling the stored gradients first (`clip_grad_norm`, then `step`), and `grad_norm` is the
/// norm that clipping measured.
#[test]
fn clipping_folded_into_the_update_gives_the_clipped_gradients_bits() {
    use molclip::optim::{clip_coefficient, grad_norm};
    for kind in [OptimizerKind::AdamW, OptimizerKind::Sgd] {
        let cfg = OptimizerConfig { kind, weight_decay: 0.05, ..OptimizerConfig::default() };
        let run = |folded: bool| -> (Vec<u32>, Vec<f64>) {
            let start: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let p = Var::from_tensor(&Tensor::new(start.as_slice(), &Device::Cpu).unwrap()).unwrap();
            let q = Var::from_tensor(&Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap()).unwrap();
            let params = vec![("p".to_string(), p.clone()), ("q".to_string(), q.clone())];
            let mut opt = Optimizer::new(params.clone(), &cfg).unwrap();
            let mut norms = Vec::new();
            for step in 0..5 {
                let weight = if step == 4 { 1e-4 } else { 1.0 };
                let loss = ((p.as_tensor().sqr().unwrap().sum_all().unwrap() * weight).unwrap()
                    + q.as_tensor().sum_all().unwrap())
                .unwrap();
                let mut grads = loss.backward().unwrap();
                let norm = if folded {
                    let norm = grad_norm(&grads, &params).unwrap();
                    opt.step_scaled(&grads, 0.01, clip_coefficient(norm, 5.0)).unwrap();
                    norm
                } else {
                    let norm = clip_grad_norm(&mut grads, &params, 5.0).unwrap();
                    opt.step(&grads, 0.01).unwrap();
                    norm
                };
                norms.push(norm);
            }
            let bits = [p.as_tensor(), q.as_tensor()]
                .iter()
                .flat_map(|t| t.to_vec1::<f32>().unwrap())
                .map(f32::to_bits)
                .collect();
            (bits, norms)
        };
        let (folded, norms) = run(true);
        assert_eq!(folded, run(false).0, "{kind:?}");
        assert_eq!(norms, run(false).1, "{kind:?}");
        assert!(norms[..4].iter().all(|&n| n > 5.0) && norms[4] < 5.0, "{kind:?}: {norms:?}");
    }
    assert_eq!(clip_coefficient(10.0, 5.0), Some(5.0 / (10.0 + 1e-6)));
    assert_eq!(clip_coefficient(4.0, 5.0), None);
    assert_eq!(clip_coefficient(f64::NAN, 5.0), None);
}
