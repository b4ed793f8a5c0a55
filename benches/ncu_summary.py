"""Where one training step's GPU time goes, from Nsight Compute's per-kernel durations.

    ncu --metrics gpu__time_duration.sum --csv molclip bench model-once ... > step.csv
    python3 benches/ncu_summary.py step.csv [TOP]

Takes the last whole step of the trace (the kernels after one run of AdamW's kernels up to
the end of the next; the whole trace where there is no such run), sums each kernel's time by
name and prints the TOP (default 25) names by time: total microseconds, share, launches.
"""

import collections
import csv
import io
import sys


def kernels(path):
    """(name, microseconds) of every kernel in an `ncu --csv` trace, in launch order."""
    lines = open(path).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    rows = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    out = []
    for r in rows:
        if r["Metric Name"] != "gpu__time_duration.sum":
            continue
        scale = {"ns": 1e-3, "usecond": 1.0, "us": 1.0, "ms": 1e3, "msecond": 1e3}.get(r["Metric Unit"], 1e-3)
        out.append((r["Kernel Name"], float(r["Metric Value"].replace(",", "")) * scale))
    return out


def last_step(trace):
    """The kernels of the trace's last whole step: after the last-but-one run of AdamW
    kernels, through the last one."""
    runs, inside = [], False
    for i, (name, _) in enumerate(trace):
        adam = "adamw" in name.lower()
        if adam and not inside:
            runs.append([i, i])
        if adam:
            runs[-1][1] = i
        inside = adam
    if len(runs) < 2:
        return trace
    return trace[runs[-2][1] + 1 : runs[-1][1] + 1]


def main():
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25
    step = last_step(kernels(path))
    total = sum(t for _, t in step)
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for name, t in step:
        by_name[name][0] += t
        by_name[name][1] += 1
    print(f"one step: {len(step)} kernels, {total / 1000:.2f} ms of kernel time")
    print(f"{'us':>10} {'share':>7} {'launches':>9}  kernel")
    for name, (t, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{t:10.0f} {100 * t / total:6.1f}% {n:9d}  {name[:110]}")


if __name__ == "__main__":
    main()
