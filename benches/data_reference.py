"""Reference for `molclip bench data`: decode and augment single-cell videos the way
MitoReID's PyTorch data pipeline does, with PIL and NumPy (python/augment_reference.py: the
config's resize, rotation, rescaling, flips, blur, crop, jitter and normalisation), in one
process.

Usage: python3 benches/data_reference.py JOB.json
JOB.json (written by molclip): {"data": the config's data section, "folders": [cell
folders]}. Prints frames per second.
"""
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from augment_reference import Augment  # noqa: E402


def main():
    job = json.load(open(sys.argv[1]))
    augment = Augment(job["data"])
    rng = random.Random(0)
    start = time.perf_counter()
    frames = 0
    for folder in job["folders"]:
        frames += augment.video(folder, rng).shape[0]
    print(f"{frames / (time.perf_counter() - start):.3f}")


if __name__ == "__main__":
    main()
