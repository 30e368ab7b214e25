"""Write a seeded, stratified subset of Fashion-MNIST as class folders (PNG), for `camtool fit`.

Reads Debian's dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist):

    python benchmarks/fashion_mnist.py DATA --train 500 --val 200 --seed 0

writes DATA/train/<class>/<n>.png and DATA/val/<class>/<n>.png (28x28 grayscale), the same
images for the same arguments. The test suite uses the same function.
"""

from __future__ import annotations

import argparse
import gzip
import random
import struct
from pathlib import Path

import cv2
import numpy as np

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a numpy array of its declared shape (uint8 data only)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, kind, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _stratified(labels: np.ndarray, count: int, rng: random.Random) -> list[int]:
    per_class = {k: [i for i in range(len(labels)) if labels[i] == k] for k in range(10)}
    chosen = []
    for k in range(10):
        take = count // 10 + (1 if k < count % 10 else 0)
        chosen += rng.sample(per_class[k], take)
    return sorted(chosen)


def write_folder(out: Path, train: int = 500, val: int = 200, seed: int = 0) -> Path:
    """Write ``train`` images from Fashion-MNIST's training set and ``val`` from its test set,
    stratified (equal numbers per class), chosen with ``seed``; return ``out``."""
    rng = random.Random(seed)
    for split, prefix, count in (("train", "train", train), ("val", "t10k", val)):
        images = read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")
        for i in _stratified(labels, count, rng):
            folder = out / split / CLASSES[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i:05d}.png"), images[i])
    return out


def available() -> bool:
    """Whether the dataset is installed."""
    return all((SOURCE / f"{p}-{k}-idx{n}-ubyte.gz").is_file()
               for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1)))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    write_folder(arguments.out, arguments.train, arguments.val, arguments.seed)
