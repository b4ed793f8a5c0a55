"""The classical segmentation and tracking pipeline in scikit-image, as a user would write
it, on the same raw fields and with the same parameters as `molclip extract`'s defaults
(configs/extract.toml): the reference of `molclip bench extract`.

Per frame: nuclei = Gaussian(w1) > Otsu, small objects removed; seeds = local maxima of
the distance transform; nuclei split by a watershed on the distance; cells = watershed of
the inverted smoothed w2 + w3 image from the nuclei, inside its Otsu foreground;
regionprops. Tracks: the Hungarian method (scipy's linear_sum_assignment) on overlap and
centroid distance, bridging one missed frame.

usage: extract_reference.py RAW_DIR OUT_DIR JOBS FIELD...   (FIELD as l1/3-1)
Writes OUT_DIR/<replicate>/<field>.labels.tif (16-bit labels = track number + 1, one page
per frame) and prints {"seconds": ..., "fields": ..., "skimage": ...} as JSON.
"""

import json
import os
import sys
import time
from multiprocessing import Pool

import numpy as np
import scipy
from PIL import Image
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
import skimage
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

NUCLEUS_SIGMA, MIN_NUCLEUS_AREA, SEED_RADIUS, MIN_SEED_DEPTH = 2.0, 30, 7, 2.0
CELL_SIGMA, CELL_WEIGHTS, CELL_THRESHOLD, MIN_CELL_AREA = 1.5, (0.3, 1.0), 0.6, 150
MAX_DISTANCE, MAX_GAP = 25.0, 1


def read(path):
    return np.asarray(Image.open(path), dtype=np.float32) / 65535.0


def frames_of(raw, replicate, field):
    t = 1
    while os.path.exists(os.path.join(raw, replicate, f"{field}_{t}_w1.tif")):
        yield [read(os.path.join(raw, replicate, f"{field}_{t}_{w}.tif")) for w in ("w1", "w2", "w3")]
        t += 1


def segment(w1, w2, w3):
    smooth = gaussian(w1, NUCLEUS_SIGMA)
    nuclei = remove_small_objects(smooth > threshold_otsu(smooth), MIN_NUCLEUS_AREA, connectivity=2)
    depth = ndi.distance_transform_edt(nuclei)
    peaks = peak_local_max(depth, min_distance=SEED_RADIUS, threshold_abs=MIN_SEED_DEPTH, labels=label(nuclei))
    markers = np.zeros(w1.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei_labels = watershed(-depth, markers, mask=nuclei)
    body = gaussian(CELL_WEIGHTS[0] * w2 + CELL_WEIGHTS[1] * w3, CELL_SIGMA)
    foreground = (body > CELL_THRESHOLD * threshold_otsu(body)) | nuclei
    cells = watershed(-body, nuclei_labels, mask=foreground)
    regions = [r for r in regionprops(cells) if r.area >= MIN_CELL_AREA]
    return cells, regions


def track(frames):
    """frames: [(labels, regions)] -> per frame, labels renumbered as track number + 1."""
    tracks = [[(0, r)] for r in frames[0][1]]
    for t in range(1, len(frames)):
        labels, regions = frames[t]
        open_ = [k for k, tr in enumerate(tracks) if 0 < t - tr[-1][0] <= MAX_GAP + 1]
        m, n = len(open_), len(regions)
        big = 1e9
        cost = np.full((m + n, n + m), big)
        for r, k in enumerate(open_):
            last, before = tracks[k][-1]
            gap = t - last - 1
            prev = frames[last][0] == before.label
            for j, cell in enumerate(regions):
                d = np.hypot(*(np.array(before.centroid) - np.array(cell.centroid)))
                if d > MAX_DISTANCE * (1 + gap):
                    continue
                common = np.count_nonzero(prev & (labels == cell.label))
                iou = common / (before.area + cell.area - common)
                c = 0.5 * (1 - iou) + 0.5 * d / (MAX_DISTANCE * (1 + gap)) + 0.2 * gap
                if c < 2.0:
                    cost[r, j] = c
            cost[r, n + r] = 1.0
        for j in range(n):
            cost[m + j, j] = 1.0
            cost[m + j, n:] = 0.0
        rows, cols = linear_sum_assignment(cost)
        taken = set()
        for r, j in zip(rows, cols):
            if r < m and j < n and cost[r, j] < big:
                tracks[open_[r]].append((t, regions[j]))
                taken.add(j)
        tracks.extend([[(t, cell)] for j, cell in enumerate(regions) if j not in taken])
    out = [np.zeros(f[0].shape, np.uint16) for f in frames]
    for k, tr in enumerate(tracks):
        for t, cell in tr:
            out[t][frames[t][0] == cell.label] = k + 1
    return out


def run(job):
    raw, out, field = job
    replicate, name = field.split("/")
    frames = [segment(*f) for f in frames_of(raw, replicate, name)]
    labels = track(frames)
    os.makedirs(os.path.join(out, replicate), exist_ok=True)
    pages = [Image.fromarray(p) for p in labels]
    pages[0].save(os.path.join(out, replicate, f"{name}.labels.tif"), save_all=True, append_images=pages[1:])


def main():
    raw, out, jobs, fields = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    start = time.perf_counter()
    with Pool(jobs) as pool:
        pool.map(run, [(raw, out, f) for f in fields])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "fields": len(fields), "skimage": skimage.__version__, "scipy": scipy.__version__}))


if __name__ == "__main__":
    main()
