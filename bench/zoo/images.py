"""Real photographs that ship inside wheels, and crops of them, for the vision models of the zoo.

Sources (nothing here downloads): scikit-learn's two sample images (china.jpg, flower.jpg, in the
installed scikit-learn package) and the photographs in the scikit-image 0.26.0 wheel's
``skimage/data/`` folder, read from the cached wheel with zipfile (scikit-image is not installed;
its ``skimage.data`` functions would fetch the larger images from the network). ``lfw_subset.npy``
in the same wheel holds 100 faces and 100 non-face patches (25 x 25, grey) from Labeled Faces in
the Wild, used by the face detector's data.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.zoo.wheels import wheel  # noqa: E402

SKIMAGE = "scikit-image"
# colour photographs of the wheel (the greyscale ones are turned to RGB by repeating the channel)
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
                  "retina.jpg", "hubble_deep_field.jpg", "ihc.png", "brick.png",
                  "grass.png", "gravel.png", "color.png", "camera.png", "moon.png", "coins.png", "page.png",
                  "text.png", "horse.png", "logo.png")


def _decode(raw: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(raw))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def photos(cache: Path | None = None) -> dict[str, np.ndarray]:
    """name -> uint8 RGB image [H, W, 3] for every photograph above that is in the wheel, plus
    scikit-learn's china and flower."""
    import sklearn.datasets

    out: dict[str, np.ndarray] = {}
    with wheel(SKIMAGE, cache=cache) as whl:
        names = set(whl.namelist())
        for n in SKIMAGE_PHOTOS:
            member = f"skimage/data/{n}"
            if member in names:
                out[n.rsplit(".", 1)[0]] = _decode(whl.read(member))
    for fname, img in zip(("china", "flower"), sklearn.datasets.load_sample_images().images):
        out[fname] = np.asarray(img, dtype=np.uint8)
    return out


def lfw_subset(cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(patches float32 [200, 25, 25] in [0, 1], is_face bool [200]): the first 100 are faces."""
    with wheel(SKIMAGE, cache=cache) as whl:
        arr = np.load(io.BytesIO(whl.read("skimage/data/lfw_subset.npy")))
    arr = np.asarray(arr, dtype=np.float32)
    if arr.max() > 1.5:
        arr /= 255.0
    return arr, np.arange(len(arr)) < 100


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 [H, W, 3] (or float [H, W]) image to size = (height, width)."""
    from PIL import Image

    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))
    out = Image.fromarray(img.astype(np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def random_crops(img: np.ndarray, n: int, size: int, rng: np.random.Generator,
                 min_scale: float = 0.3) -> list[np.ndarray]:
    """n square crops (side min_scale..1 of the short side, random place, half of them mirrored),
    each resized to size x size."""
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(min_scale, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(resize(np.ascontiguousarray(crop), (size, size)))
    return out
