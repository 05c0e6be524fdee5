"""Write the default calibration set, edgeseg/data/calibration/, from photos in PyPI wheels.

Run once by a maintainer (``python scripts/make_calibration_set.py``) with
scikit-image and matplotlib installed; the output is committed. Nothing is
downloaded. The golden/evaluation photos (edgeseg/data/images: astronaut,
camera, rocket) are deliberately *not* used, so calibration and evaluation
stay apart.

Sources (all public domain or CC0):
  grace_hopper.jpg      matplotlib sample_data  US Navy photo, public domain
  coffee.png            scikit-image data       Rachel Michetti, CC0
  chelsea.png           scikit-image data       Stefan van der Walt, CC0
  hubble_deep_field.jpg scikit-image data       NASA, public domain

Each photo gives 8 views (whole, mirrored, six crops), so the model sees
people and backgrounds at several scales, saved as JPEG (quality 90, long
side 256 px): 32 files (the profiles' default ``calib_count``), about 0.4 MB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

CROPS = [(0.0, 0.0, 0.7, 0.7), (0.3, 0.0, 1.0, 0.7), (0.0, 0.3, 0.7, 1.0), (0.3, 0.3, 1.0, 1.0), (0.15, 0.15, 0.85, 0.85), (0.25, 0.0, 0.75, 1.0)]


def sources() -> dict[str, Path]:
    import matplotlib
    import skimage

    sk = Path(skimage.__file__).parent / "data"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    return {
        "grace_hopper": mpl / "grace_hopper.jpg",
        "coffee": sk / "coffee.png",
        "chelsea": sk / "chelsea.png",
        "hubble": sk / "hubble_deep_field.jpg",
    }


def views(img: Image.Image) -> list[tuple[str, Image.Image]]:
    w, h = img.size
    out = [("full", img), ("mirror", img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    for i, (a, b, c, d) in enumerate(CROPS):
        out.append((f"crop{i}", img.crop((int(a * w), int(b * h), int(c * w), int(d * h)))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "edgeseg" / "data" / "calibration")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, path in sources().items():
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        for view, img in views(rgb):
            img = img.copy()
            img.thumbnail((256, 256), Image.Resampling.LANCZOS)
            img.save(args.out / f"{name}_{view}.jpg", quality=90, optimize=True)
    total = sum(p.stat().st_size for p in args.out.glob("*.jpg"))
    print(f"{len(list(args.out.glob('*.jpg')))} images, {total / 1e3:.0f} kB in {args.out}")


if __name__ == "__main__":
    main()
