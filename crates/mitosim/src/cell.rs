//! One cell: an irregular body with a nucleus and a network of mitochondrial
//! filaments, and how that network looks at each time point given the
//! phenotype levels of the moment.
//!
//! Geometry lives in the cell's own frame, the unit disc; the body ellipse,
//! rotation, position and stage drift map it to pixels.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::config::BiologyConfig;
use crate::N_AXES;

type P2 = [f64; 2];

/// One mitochondrial filament and the fixed random thresholds that decide,
/// as phenotypes rise, where it splits, whether it swells into a ring and
/// whether it fuses with its neighbour. Fixed thresholds make fission
/// progressive: a split, once made, stays made while the driver stays up.
#[derive(Debug, Clone)]
struct Filament {
    points: Vec<P2>,
    /// Per interior point: split when fragmentation exceeds it.
    split: Vec<f64>,
    ring: f64,
    link: f64,
    brightness: f64,
    /// Drift along the network per frame (motility), unit-disc units.
    velocity: P2,
}

/// A cell and everything about it that does not change over time.
#[derive(Debug, Clone)]
pub struct Cell {
    center: P2,
    /// Semi-axes in pixels.
    axes: P2,
    angle: f64,
    nucleus: P2,
    nucleus_radius: f64,
    filaments: Vec<Filament>,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

impl Cell {
    /// A random cell of a `size`-pixel crop.
    pub fn draw(rng: &mut ChaCha8Rng, size: usize, biology: &BiologyConfig) -> Self {
        let s = size as f64;
        let a = rng.random_range(0.33..0.44) * s;
        let b = a * rng.random_range(0.62..0.95);
        let center = [s / 2.0 + rng.random_range(-0.06..0.06) * s, s / 2.0 + rng.random_range(-0.06..0.06) * s];
        let nucleus_radius = rng.random_range(0.26..0.36);
        let nucleus = [rng.random_range(-0.12..0.12), rng.random_range(-0.12..0.12)];
        let n = rng.random_range(biology.filaments[0]..=biology.filaments[1]);
        let filaments = (0..n).map(|_| Self::filament(rng, nucleus, nucleus_radius)).collect();
        Self {
            center,
            axes: [a, b],
            angle: rng.random_range(0.0..std::f64::consts::PI),
            nucleus,
            nucleus_radius,
            filaments,
        }
    }

    fn filament(rng: &mut ChaCha8Rng, nucleus: P2, rn: f64) -> Filament {
        // Start in the cytoplasm, walk with a smoothly turning heading,
        // staying between the nucleus and the membrane.
        let (mut p, mut heading);
        loop {
            p = [rng.random_range(-0.95..0.95), rng.random_range(-0.95..0.95)];
            if inside_cytoplasm(p, nucleus, rn) {
                break;
            }
        }
        let radial = (p[1] - nucleus[1]).atan2(p[0] - nucleus[0]);
        heading =
            radial + std::f64::consts::FRAC_PI_2 * if rng.random_bool(0.5) { 1.0 } else { -1.0 } + 0.5 * normal(rng);
        let steps = rng.random_range(4..11);
        let step = rng.random_range(0.05..0.08);
        let mut points = vec![p];
        for _ in 0..steps {
            heading += 0.45 * normal(rng);
            let mut next = [p[0] + step * heading.cos(), p[1] + step * heading.sin()];
            if !inside_cytoplasm(next, nucleus, rn) {
                heading += std::f64::consts::PI * 0.7;
                next = [p[0] + step * heading.cos(), p[1] + step * heading.sin()];
                if !inside_cytoplasm(next, nucleus, rn) {
                    break;
                }
            }
            p = next;
            points.push(p);
        }
        let split = (0..points.len().saturating_sub(2)).map(|_| rng.random::<f64>()).collect();
        let speed = rng.random_range(0.004..0.016);
        let dir = rng.random_range(0.0..std::f64::consts::TAU);
        Filament {
            points,
            split,
            ring: rng.random(),
            link: rng.random(),
            brightness: rng.random_range(0.7..1.3),
            velocity: [speed * dir.cos(), speed * dir.sin()],
        }
    }
}

fn inside_cytoplasm(p: P2, nucleus: P2, rn: f64) -> bool {
    let r = (p[0] * p[0] + p[1] * p[1]).sqrt();
    let dn = ((p[0] - nucleus[0]).powi(2) + (p[1] - nucleus[1]).powi(2)).sqrt();
    r < 0.93 && dn > rn + 0.04
}

/// The phenotype of the moment, by axis name.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    fragmentation: f64,
    swelling: f64,
    clustering: f64,
    motility_loss: f64,
    depolarization: f64,
    hyperfusion: f64,
    apoptosis: f64,
}

impl From<[f64; N_AXES]> for State {
    fn from(p: [f64; N_AXES]) -> Self {
        Self {
            fragmentation: p[0].max(0.0),
            swelling: p[1].max(0.0),
            clustering: p[2].max(0.0),
            motility_loss: p[3].clamp(0.0, 1.0),
            // Negative: hyperpolarised, brighter.
            depolarization: p[4],
            hyperfusion: p[5].max(0.0),
            apoptosis: p[6].max(0.0),
        }
    }
}

/// One frame of a cell in the three stains of a raw field, on the cell's own
/// `size * size` canvas.
#[derive(Debug, Clone)]
pub struct CellStains {
    /// w2: the mitochondrial network (what [`CellMovie::next_frame`] draws).
    pub mito: Vec<f32>,
    /// w1: the nuclear stain, in [0, 1].
    pub nucleus: Vec<f32>,
    /// w3: the cytoplasmic stain, in [0, 1].
    pub cytoplasm: Vec<f32>,
    /// Where the cell is: the squared elliptical radius (below 1 inside the body), infinite
    /// outside. Where cells overlap, a pixel belongs to the cell it is most central to.
    pub extent: Vec<f32>,
}

/// Renders a cell's frames in order; it carries motility and drift from one
/// frame to the next.
pub struct CellMovie<'a> {
    cell: &'a Cell,
    size: usize,
    offsets: Vec<P2>,
    drift: P2,
    drift_sigma: f64,
    rng: ChaCha8Rng,
}

impl<'a> CellMovie<'a> {
    /// The frames of `cell`, drifting by `drift_sigma` pixels per frame, seeded by `seed`.
    pub fn new(cell: &'a Cell, size: usize, drift_sigma: f64, seed: u64) -> Self {
        Self {
            cell,
            size,
            offsets: vec![[0.0; 2]; cell.filaments.len()],
            drift: [0.0; 2],
            drift_sigma,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The optical image (before blur and camera) for phenotype levels `phenotype`.
    pub fn next_frame(&mut self, phenotype: [f64; N_AXES]) -> Vec<f32> {
        self.render(phenotype, None)
    }

    /// The next frame in all three stains, with the cell's extent: what a raw field is
    /// assembled from. The mitochondrial plane and the random stream are those of
    /// [`next_frame`](Self::next_frame).
    pub fn next_stains(&mut self, phenotype: [f64; N_AXES]) -> CellStains {
        let n = self.size * self.size;
        let mut stains = CellStains {
            mito: Vec::new(),
            nucleus: vec![0.0; n],
            cytoplasm: vec![0.0; n],
            extent: vec![f32::INFINITY; n],
        };
        stains.mito = self.render(phenotype, Some(&mut stains));
        stains
    }

    fn render(&mut self, phenotype: [f64; N_AXES], mut stains: Option<&mut CellStains>) -> Vec<f32> {
        let st = State::from(phenotype);
        let cell = self.cell;
        let scale = self.size as f64 / 64.0;
        let mobility = 1.0 - st.motility_loss;
        for (off, f) in self.offsets.iter_mut().zip(&cell.filaments) {
            off[0] += mobility * (f.velocity[0] + 0.006 * normal(&mut self.rng));
            off[1] += mobility * (f.velocity[1] + 0.006 * normal(&mut self.rng));
            // Mitochondria move back and forth along microtubules: stay near home.
            off[0] *= 0.93;
            off[1] *= 0.93;
        }
        self.drift[0] += self.drift_sigma * scale * normal(&mut self.rng);
        self.drift[1] += self.drift_sigma * scale * normal(&mut self.rng);

        // Body: apoptosis shrinks and rounds the cell.
        let shrink = 1.0 - 0.35 * st.apoptosis;
        let mean_axis = 0.5 * (cell.axes[0] + cell.axes[1]);
        let axes = [
            shrink * (cell.axes[0] + st.apoptosis * (mean_axis - cell.axes[0])),
            shrink * (cell.axes[1] + st.apoptosis * (mean_axis - cell.axes[1])),
        ];
        let (sin, cos) = cell.angle.sin_cos();
        let center = [cell.center[0] + self.drift[0], cell.center[1] + self.drift[1]];
        let to_pixel = |p: P2| -> P2 {
            let (x, y) = (p[0] * axes[0], p[1] * axes[1]);
            [center[0] + cos * x - sin * y, center[1] + sin * x + cos * y]
        };
        let mut image = vec![0.0f32; self.size * self.size];

        // Diffuse dye in the cytoplasm rises as mitochondria depolarise; the
        // nucleus stays dark.
        let cyto = (0.05 + 0.12 * st.depolarization.max(0.0)) as f32;
        let rn = cell.nucleus_radius * (1.0 - 0.25 * st.apoptosis);
        for y in 0..self.size {
            for x in 0..self.size {
                let (dx, dy) = (x as f64 + 0.5 - center[0], y as f64 + 0.5 - center[1]);
                let (u, v) = ((cos * dx + sin * dy) / axes[0], (-sin * dx + cos * dy) / axes[1]);
                let r2 = u * u + v * v;
                if r2 < 1.0 {
                    let dn = ((u - cell.nucleus[0]).powi(2) + (v - cell.nucleus[1]).powi(2)).sqrt();
                    let edge = ((1.0 - r2) * 6.0).min(1.0) as f32;
                    let i = y * self.size + x;
                    image[i] = if dn < rn { 0.01 } else { cyto * edge };
                    if let Some(s) = stains.as_deref_mut() {
                        s.extent[i] = r2 as f32;
                        // Chromatin is brighter towards the nucleus' centre; the cytoplasmic
                        // stain fills the body and is dimmer over the nucleus.
                        if dn < rn {
                            s.nucleus[i] = (1.0 - 0.35 * (dn / rn).powi(2)) as f32;
                            s.cytoplasm[i] = 0.45 * edge;
                        } else {
                            s.cytoplasm[i] = edge;
                        }
                    }
                }
            }
        }

        let intensity = (1.0 - 0.85 * st.depolarization) * (1.0 - 0.3 * st.apoptosis);
        let compress = (0.6 * st.clustering + 0.2 * st.apoptosis).min(0.85);
        let line_density = 1.1 * scale.sqrt();
        let base_break = 0.12 * (1.0 - st.hyperfusion);
        let fission = (base_break + 0.95 * st.fragmentation).min(1.0);
        let contraction = (1.0 - 0.75 * st.fragmentation) * (1.0 + 0.45 * st.hyperfusion);
        let n_fil = cell.filaments.len();
        let mut ends: Vec<(P2, P2)> = Vec::with_capacity(n_fil);
        for (fi, f) in cell.filaments.iter().enumerate() {
            let off = self.offsets[fi];
            // Move, then pull towards the nucleus (perinuclear clustering).
            let pts: Vec<P2> = f
                .points
                .iter()
                .map(|p| {
                    let q = [p[0] + off[0], p[1] + off[1]];
                    let d = [q[0] - cell.nucleus[0], q[1] - cell.nucleus[1]];
                    let r = (d[0] * d[0] + d[1] * d[1]).sqrt().max(1e-6);
                    let target = rn + 0.03 + (r - rn - 0.03).max(0.0) * (1.0 - compress);
                    let q = [cell.nucleus[0] + d[0] / r * target, cell.nucleus[1] + d[1] / r * target];
                    // Keep inside the membrane.
                    let rq = (q[0] * q[0] + q[1] * q[1]).sqrt();
                    if rq > 0.95 {
                        [q[0] * 0.95 / rq, q[1] * 0.95 / rq]
                    } else {
                        q
                    }
                })
                .collect();
            ends.push((pts[0], *pts.last().unwrap()));
            let weight = (line_density * f.brightness * intensity) as f32;
            // Fission: split at the interior points whose threshold is passed.
            let mut start = 0;
            for j in 0..pts.len() {
                let cut = j + 1 == pts.len() || (j >= 1 && f.split.get(j - 1).is_some_and(|&u| u < fission));
                if !cut {
                    continue;
                }
                let piece = &pts[start..=j];
                start = j + 1;
                let n = piece.len() as f64;
                let c = [piece.iter().map(|p| p[0]).sum::<f64>() / n, piece.iter().map(|p| p[1]).sum::<f64>() / n];
                let shrunk: Vec<P2> = piece
                    .iter()
                    .map(|p| to_pixel([c[0] + (p[0] - c[0]) * contraction, c[1] + (p[1] - c[1]) * contraction]))
                    .collect();
                let ring = (f.ring + 0.37 * start as f64).fract() < st.swelling;
                if ring {
                    // Swollen mitochondria: hollow "donuts".
                    let centre = to_pixel(c);
                    let radius = (0.8 + 2.2 * st.swelling) * scale;
                    let steps = (radius * 12.0).ceil().max(8.0) as usize;
                    let mass = weight * 0.7 * (piece.len().max(2) as f32);
                    for k in 0..steps {
                        let a = k as f64 / steps as f64 * std::f64::consts::TAU;
                        splat(
                            &mut image,
                            self.size,
                            [centre[0] + radius * a.cos(), centre[1] + radius * a.sin()],
                            mass / steps as f32,
                        );
                    }
                } else if shrunk.len() == 1 {
                    splat(&mut image, self.size, shrunk[0], weight * 1.2);
                } else {
                    draw_polyline(&mut image, self.size, &shrunk, weight);
                }
            }
        }
        // Hyperfusion: filament ends join their neighbours into long networks.
        if st.hyperfusion > 0.0 {
            for i in 0..n_fil {
                let f = &cell.filaments[i];
                if f.link >= st.hyperfusion {
                    continue;
                }
                let end = ends[i].1;
                let (j, d) = (0..n_fil)
                    .filter(|&j| j != i)
                    .map(|j| (j, dist(end, ends[j].0)))
                    .fold((i, f64::MAX), |best, x| if x.1 < best.1 { x } else { best });
                if j != i && d < 0.45 {
                    let w = (line_density * f.brightness * intensity) as f32;
                    draw_polyline(&mut image, self.size, &[to_pixel(end), to_pixel(ends[j].0)], w);
                }
            }
        }
        image
    }
}

fn dist(a: P2, b: P2) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Bilinear deposit of `mass` at a sub-pixel position.
fn splat(image: &mut [f32], size: usize, p: P2, mass: f32) {
    let (x, y) = (p[0] - 0.5, p[1] - 0.5);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
    for (dx, dy, w) in
        [(0, 0, (1.0 - fx) * (1.0 - fy)), (1, 0, fx * (1.0 - fy)), (0, 1, (1.0 - fx) * fy), (1, 1, fx * fy)]
    {
        let (xi, yi) = (x0 as isize + dx, y0 as isize + dy);
        if xi >= 0 && yi >= 0 && (xi as usize) < size && (yi as usize) < size {
            image[yi as usize * size + xi as usize] += mass * w;
        }
    }
}

/// A tube of linear density `density` along the polyline, sampled every
/// half pixel (the PSF blur does the rest).
fn draw_polyline(image: &mut [f32], size: usize, pts: &[P2], density: f32) {
    for w in pts.windows(2) {
        let len = dist(w[0], w[1]);
        let steps = (len / 0.5).ceil().max(1.0) as usize;
        let mass = density * (len / steps as f64) as f32;
        for k in 0..steps {
            let t = (k as f64 + 0.5) / steps as f64;
            splat(image, size, [w[0][0] + t * (w[1][0] - w[0][0]), w[0][1] + t * (w[1][1] - w[0][1])], mass);
        }
    }
}
