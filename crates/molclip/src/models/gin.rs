//! Graph isomorphism network over molecular graphs.
//!
//! Xu et al., "How Powerful are Graph Neural Networks?" (ICLR 2019), with edge features as in
//! the OGB reference (`ogb/examples/graphproppred/mol`, `GINConv` with a `BondEncoder`): each
//! layer computes h' = MLP((1 + ε)·h + Σⱼ ReLU(hⱼ + e_ji)), then batch norm and ReLU (none after
//! the last layer); a molecule is the mean of its atoms. Atom and bond features are the
//! integer-coded OGB columns of `molclip-chem`, each with its own embedding table, summed.

use candle_core::{DType, Device, Tensor};
use molclip_chem::{Graph, ATOM_FEATURE_DIMS, BOND_FEATURE_DIMS};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{add_relu, BatchNorm, Init, Linear, Vb};

/// The GIN's size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GinConfig {
    /// Hidden width.
    pub hidden: usize,
    /// Message-passing layers.
    pub layers: usize,
}

impl Default for GinConfig {
    fn default() -> Self {
        Self { hidden: 256, layers: 3 }
    }
}

/// Many molecular graphs as one disconnected graph.
#[derive(Clone, Debug)]
pub struct GraphBatch {
    /// One `[N]` U32 tensor per atom feature column.
    atom_columns: Vec<Tensor>,
    /// One `[E]` U32 tensor per bond feature column (each bond twice, once per direction).
    bond_columns: Vec<Tensor>,
    src: Tensor,
    dst: Tensor,
    edges: usize,
    graph_of_atom: Tensor,
    atoms_per_graph: Tensor,
    atoms: usize,
    graphs: usize,
}

impl GraphBatch {
    /// Molecular graphs as one batch on `device`.
    pub fn new(graphs: &[&Graph], device: &Device) -> Result<Self> {
        if graphs.is_empty() {
            return Err(ModelError::Input("a molecule batch needs at least one molecule".into()));
        }
        let mut atom_cols = vec![Vec::new(); ATOM_FEATURE_DIMS.len()];
        let mut bond_cols = vec![Vec::new(); BOND_FEATURE_DIMS.len()];
        let (mut src, mut dst, mut graph_of_atom, mut counts) = (vec![], vec![], vec![], vec![]);
        let mut offset = 0u32;
        for (g, graph) in graphs.iter().enumerate() {
            if graph.atoms.is_empty() {
                return Err(ModelError::Input(format!("molecule {g} of the batch has no atoms")));
            }
            for atom in &graph.atoms {
                for (col, v) in atom_cols.iter_mut().zip(atom.encode()) {
                    col.push(v as u32);
                }
                graph_of_atom.push(g as u32);
            }
            for bond in &graph.bonds {
                for (a, b) in [(bond.begin, bond.end), (bond.end, bond.begin)] {
                    src.push(offset + a as u32);
                    dst.push(offset + b as u32);
                    for (col, v) in bond_cols.iter_mut().zip(bond.encode()) {
                        col.push(v as u32);
                    }
                }
            }
            counts.push(graph.atoms.len() as f32);
            offset += graph.atoms.len() as u32;
        }
        let u32s = |v: Vec<u32>| Tensor::from_vec(v.clone(), v.len(), device);
        let edges = src.len();
        Ok(Self {
            atom_columns: atom_cols.into_iter().map(u32s).collect::<candle_core::Result<_>>()?,
            bond_columns: bond_cols.into_iter().map(u32s).collect::<candle_core::Result<_>>()?,
            src: u32s(src)?,
            dst: u32s(dst)?,
            edges,
            graph_of_atom: u32s(graph_of_atom)?,
            atoms_per_graph: Tensor::from_vec(counts, (graphs.len(), 1), device)?,
            atoms: offset as usize,
            graphs: graphs.len(),
        })
    }

    /// Graphs in the batch.
    pub fn num_graphs(&self) -> usize {
        self.graphs
    }

    /// The batch as PyG-style arrays: atom features `[N, 8]`, edge sources and targets `[E]`,
    /// bond features `[E, 4]` and the molecule of each atom `[N]`.
    pub fn arrays(&self) -> Result<(Tensor, Tensor, Tensor, Tensor, Tensor)> {
        let bonds = if self.edges > 0 {
            Tensor::stack(&self.bond_columns, 1)?
        } else {
            Tensor::zeros((0, BOND_FEATURE_DIMS.len()), DType::U32, self.src.device())?
        };
        Ok((
            Tensor::stack(&self.atom_columns, 1)?,
            self.src.clone(),
            self.dst.clone(),
            bonds,
            self.graph_of_atom.clone(),
        ))
    }
}

/// Sum of one embedding per integer feature column (OGB's `AtomEncoder` / `BondEncoder`),
/// Xavier-uniform initialised as there.
#[derive(Clone, Debug)]
struct FeatureEncoder {
    tables: Vec<Tensor>,
}

impl FeatureEncoder {
    fn new(vb: &Vb, sizes: &[usize], dim: usize) -> Result<Self> {
        let tables = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vb.pp(i).param("weight", &[n, dim], Init::Uniform((6.0 / (n + dim) as f64).sqrt())))
            .collect::<molclip_nn::Result<_>>()?;
        Ok(Self { tables })
    }

    fn forward(&self, columns: &[Tensor]) -> Result<Tensor> {
        let mut sum = self.tables[0].index_select(&columns[0], 0)?;
        for (table, col) in self.tables.iter().zip(columns).skip(1) {
            sum = (sum + table.index_select(col, 0)?)?;
        }
        Ok(sum)
    }
}

#[derive(Clone, Debug)]
struct GinLayer {
    bond_encoder: FeatureEncoder,
    eps: Tensor,
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl GinLayer {
    fn new(vb: &Vb, hidden: usize) -> Result<Self> {
        Ok(Self {
            bond_encoder: FeatureEncoder::new(
                &vb.pp("bond_encoder").pp("bond_embedding_list"),
                &BOND_FEATURE_DIMS,
                hidden,
            )?,
            eps: vb.param("eps", &[1], Init::Zeros)?,
            fc1: Linear::new(&vb.pp("mlp").pp(0), hidden, 2 * hidden, true)?,
            bn: BatchNorm::new(&vb.pp("mlp").pp(1), 2 * hidden)?,
            fc2: Linear::new(&vb.pp("mlp").pp(3), 2 * hidden, hidden, true)?,
        })
    }

    fn forward_t(&self, h: &Tensor, batch: &GraphBatch, train: bool) -> Result<Tensor> {
        let mut agg = h.zeros_like()?;
        if batch.edges > 0 {
            let e = self.bond_encoder.forward(&batch.bond_columns)?;
            let messages = add_relu(&h.index_select(&batch.src, 0)?, &e)?;
            agg = agg.index_add(&batch.dst, &messages, 0)?;
        }
        let x = (h.broadcast_mul(&(&self.eps + 1.0)?)? + agg)?;
        let x = self.bn.forward_relu_t(&self.fc1.forward(&x)?, train)?;
        Ok(self.fc2.forward(&x)?)
    }
}

/// A graph isomorphism network over OGB atom and bond features, sum-pooled per molecule.
#[derive(Clone, Debug)]
pub struct Gin {
    atom_encoder: FeatureEncoder,
    convs: Vec<GinLayer>,
    batch_norms: Vec<BatchNorm>,
    hidden: usize,
}

impl Gin {
    /// The network, its weights under `vb` (OGB names).
    pub fn new(vb: &Vb, cfg: &GinConfig) -> Result<Self> {
        if cfg.layers == 0 || cfg.hidden == 0 {
            return Err(ModelError::config("gin.layers", "layers and hidden must be positive"));
        }
        Ok(Self {
            atom_encoder: FeatureEncoder::new(
                &vb.pp("atom_encoder").pp("atom_embedding_list"),
                &ATOM_FEATURE_DIMS,
                cfg.hidden,
            )?,
            convs: (0..cfg.layers).map(|l| GinLayer::new(&vb.pp("convs").pp(l), cfg.hidden)).collect::<Result<_>>()?,
            batch_norms: (0..cfg.layers)
                .map(|l| BatchNorm::new(&vb.pp("batch_norms").pp(l), cfg.hidden))
                .collect::<molclip_nn::Result<_>>()?,
            hidden: cfg.hidden,
        })
    }

    /// Feature width.
    pub fn out_dim(&self) -> usize {
        self.hidden
    }

    /// Returns one `[G, hidden]` row per molecule.
    pub fn forward_t(&self, batch: &GraphBatch, train: bool) -> Result<Tensor> {
        let mut h = self.atom_encoder.forward(&batch.atom_columns)?;
        let last = self.convs.len() - 1;
        for (l, (conv, bn)) in self.convs.iter().zip(&self.batch_norms).enumerate() {
            let y = conv.forward_t(&h, batch, train)?;
            h = if l < last { bn.forward_relu_t(&y, train)? } else { bn.forward_t(&y, train)? };
        }
        let sums = Tensor::zeros((batch.graphs, self.hidden), DType::F32, h.device())?.index_add(
            &batch.graph_of_atom,
            &h,
            0,
        )?;
        debug_assert_eq!(batch.atoms, h.dim(0)?);
        Ok(sums.broadcast_div(&batch.atoms_per_graph)?)
    }
}
