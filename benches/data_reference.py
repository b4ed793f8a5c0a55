"""Reference for `molclip bench data`: decode and augment single-cell videos
the way a PyTorch data pipeline would, with PIL and NumPy (torchvision-style
transforms: resize 128, random rotation, flips, random crop 112, brightness
and contrast jitter, normalisation), one process.

Usage: python3 benches/data_reference.py LIST.txt
LIST.txt holds one cell folder per line (frames 1.png .. T.png).
Prints frames per second.
"""
import os
import random
import sys
import time

import numpy as np
from PIL import Image


def augment_video(folder, rng):
    names = sorted((f for f in os.listdir(folder) if f.endswith(".png")), key=lambda f: int(f.split(".")[0]))
    angle = rng.uniform(-180, 180)
    hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
    x0, y0 = rng.randint(0, 16), rng.randint(0, 16)
    b, c = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    frames = []
    for name in names:
        img = Image.open(os.path.join(folder, name)).convert("F")
        img = img.resize((128, 128), Image.BILINEAR)
        img = img.rotate(angle, resample=Image.BILINEAR)
        if hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if vflip:
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        img = img.crop((x0, y0, x0 + 112, y0 + 112))
        frames.append(np.asarray(img, dtype=np.float32) / 255.0)
    video = np.stack(frames)
    grey = video.mean() * b
    video = np.clip((video * b - grey) * c + grey, 0.0, 1.0)
    return (video - 0.1) / 0.2


def main():
    folders = [line.strip() for line in open(sys.argv[1]) if line.strip()]
    rng = random.Random(0)
    start = time.perf_counter()
    frames = 0
    for f in folders:
        frames += augment_video(f, rng).shape[0]
    print(f"{frames / (time.perf_counter() - start):.3f}")


if __name__ == "__main__":
    main()
