"""The training augmentation of a molclip config's `data` section, the way MitoReID's
PyTorch code does it: PIL on 8-bit frames (resize, rotation with its fill, rescaling with
its filter, flips, blur, crop), then brightness and contrast jitter and normalisation in
NumPy. Used by `benches/train_reference.py` (inside a PyTorch DataLoader) and
`benches/data_reference.py` (alone). PIL and NumPy only.
"""
import math
import os

import numpy as np
from PIL import Image, ImageFilter

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def frame_files(folder):
    names = [f for f in os.listdir(folder) if f.lower().endswith(FRAME_SUFFIXES)]
    return [os.path.join(folder, f) for f in sorted(names, key=lambda f: int(os.path.splitext(f)[0]))]


class Augment:
    """One random transform per video, as `data.augment` says."""

    def __init__(self, data):
        self.frames = data["frames"]["frames"]
        self.rgb = data["frames"]["channels"] == "rgb"
        a = data["augment"]
        self.resize, self.crop = a["resize"], a["crop"]
        self.rotation, self.hflip, self.vflip = a["max_rotation"], a["hflip"], a["vflip"]
        low = a.get("min_rotation")
        self.min_rotation = -self.rotation if low is None else low
        self.whole_degrees = a.get("whole_degrees", False)
        self.rotation_rate = a.get("rotation_rate", 1.0)
        self.darkest_fill = a.get("rotation_fill", "black") == "darkest"
        self.rescale, self.rescale_rate = a.get("rescale", 0.0), a.get("rescale_rate", 1.0)
        self.rescale_filter = Image.BICUBIC if a.get("rescale_filter") == "bicubic" else Image.BILINEAR
        self.crop_range = a.get("crop_range", 1.0)
        self.blur_rate, self.blur_sigma = a.get("blur_rate", 0.0), a.get("blur_sigma", [1.0, 3.0])
        self.brightness, self.contrast = a["brightness"], a["contrast"]
        channels = 3 if self.rgb else 1
        per = lambda v: np.asarray(v if isinstance(v, list) else [v] * channels, dtype=np.float32)
        self.mean = per(data["normalize"]["mean"]).reshape(1, -1, 1, 1)
        self.std = per(data["normalize"]["std"]).reshape(1, -1, 1, 1)

    def video(self, folder, rng):
        """The video in `folder` augmented with draws from `rng` (a `random.Random`):
        float32 [T, C, crop, crop], normalised."""
        files = frame_files(folder)
        picks = np.linspace(0, len(files) - 1, self.frames).round().astype(int)
        rotated = self.rotation > 0 and rng.random() < self.rotation_rate
        low, high = self.min_rotation, self.rotation
        if not rotated:
            angle = 0.0
        elif self.whole_degrees:
            angle = rng.randint(math.ceil(low), math.floor(high))
        else:
            angle = rng.uniform(low, high)
        hflip = self.hflip and rng.random() < 0.5
        vflip = self.vflip and rng.random() < 0.5
        side = self.resize
        if self.rescale > 0 and rng.random() < self.rescale_rate:
            side = int(self.resize * rng.uniform(1 - self.rescale, 1 + self.rescale))
        room = side - self.crop
        low, high = sorted(round(room * f) for f in (0.5 - self.crop_range / 2, 0.5 + self.crop_range / 2))
        x0, y0 = rng.randint(low, high), rng.randint(low, high)
        sigma = rng.uniform(*self.blur_sigma) if self.blur_rate > 0 else 0.0
        out = []
        for k in picks:
            img = Image.open(files[k]).convert("RGB" if self.rgb else "L")
            img = img.resize((self.resize, self.resize), Image.BILINEAR)
            if angle:
                fill = int(np.min(np.asarray(img))) if self.darkest_fill else 0
                img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=fill if not self.rgb else (fill,) * 3)
            if side != self.resize:
                img = img.resize((side, side), self.rescale_filter)
            if hflip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            if vflip:
                img = img.transpose(Image.FLIP_TOP_BOTTOM)
            if sigma and rng.random() < self.blur_rate:
                img = img.filter(ImageFilter.GaussianBlur(sigma))
            img = img.crop((x0, y0, x0 + self.crop, y0 + self.crop))
            a = np.asarray(img, dtype=np.float32) / 255.0
            out.append(a.transpose(2, 0, 1) if self.rgb else a[None])
        video = np.stack(out)
        if self.brightness or self.contrast:
            b = 1 + rng.uniform(-self.brightness, self.brightness)
            c = 1 + rng.uniform(-self.contrast, self.contrast)
            grey = video.mean() * b
            video = np.clip((video * b - grey) * c + grey, 0.0, 1.0)
        return (video - self.mean) / self.std
