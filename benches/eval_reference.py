"""Reference for `molclip evaluate`: the MitoReID / Market-1501 protocol
written the straightforward way, with NumPy (full distance matrix, stable
argsort per query).

Usage: python3 benches/eval_reference.py E.npy M.csv [OUT.json]
Prints (or writes) {"drug": {...}, "moa": {...}, "seconds": s, "peak_rss_mib": m}.
"""
import csv
import json
import resource
import sys
import time

import numpy as np


def evaluate(dist, q, g, task, max_rank=50):
    aps, cmc, valid = [], np.zeros(max_rank), 0
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        remove = (g["replicate"][order] == q["replicate"][i]) & (g["drug"][order] == q["drug"][i])
        matches = (g[task][order] == q[task][i])[~remove]
        if not matches.any():
            continue
        valid += 1
        hits = matches.cumsum()
        first = int(np.argmax(matches))
        cmc[first:] += 1
        positions = np.nonzero(matches)[0]
        aps.append(float(np.mean(hits[positions] / (positions + 1.0))))
    if valid == 0:
        raise SystemExit(f"no valid query for the {task} task")
    cmc = 100.0 * cmc / valid
    return {"mAP": 100.0 * float(np.mean(aps)), "rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9], "valid_queries": valid,
            "cmc": cmc.tolist()}


def blas_core():
    """The kernels NumPy's OpenBLAS picked for this CPU (OPENBLAS_CORETYPE caps them), e.g.
    Haswell (AVX2) or SkylakeX (AVX-512); "?" when the BLAS is another."""
    import ctypes

    with open("/proc/self/maps") as maps:
        libs = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    for lib in libs:
        handle = ctypes.CDLL(lib)
        for name in ("openblas_get_corename", "scipy_openblas_get_corename64_", "openblas_get_corename64_"):
            f = getattr(handle, name, None)
            if f is not None:
                f.restype = ctypes.c_char_p
                return "OpenBLAS " + f().decode()
    return "?"


def main():
    start = time.perf_counter()
    features = np.load(sys.argv[1]).astype(np.float64)
    with open(sys.argv[2], newline="") as f:
        rows = list(csv.DictReader(f))
    sets = np.array([r["set"] for r in rows])
    cols = {k: np.array([r[k] for r in rows]) for k in ("replicate", "drug", "moa")}
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    qi, gi = np.nonzero(sets == "query")[0], np.nonzero(sets == "gallery")[0]
    q = {k: v[qi] for k, v in cols.items()}
    g = {k: v[gi] for k, v in cols.items()}
    dist = 1.0 - features[qi] @ features[gi].T
    result = {"drug": evaluate(dist, q, g, "drug"), "moa": evaluate(dist, q, g, "moa")}
    result["seconds"] = time.perf_counter() - start
    result["isa"] = blas_core()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    text = json.dumps(result)
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
