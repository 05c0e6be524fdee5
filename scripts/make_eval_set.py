#!/usr/bin/env python3
"""Re-create the default evaluation photo set in ``edgeseg/data/eval/``.

The set is what the int8 accuracy gate evaluates person-segmentation models
on: 28 small JPEGs (long side <= 512 px, quality 90) cut from 22 real
photographs, 14 of them showing people (close portraits, half-body,
full-body, small people in a scene, two people together) and 14 without a
person (landscapes, interiors, animals, objects) so that false-positive masks
are measured too.  ``edgeseg/data/eval/README.md`` lists every file with its
package, path, licence and credit.

Every source file is taken from a package, never from the web:

* PyPI: scikit-learn and scikit-image are used from the installed
  environment when the files there match the recorded SHA-256; otherwise,
  and for pywavelets, mahotas, scipy 1.9.3 (whose wheel still ships
  ``scipy/misc/face.dat``) and the face_recognition 1.3.0 sdist, the exact
  pinned version is fetched with ``python -m pip download --no-deps`` into a
  temporary folder (about 60 MB in all).
* Debian (bookworm): ``lomiri-wallpapers-16.04`` (16 MB) and ``opencv-doc``
  (96 MB) are fetched with ``apt-get download PKG=VERSION`` into the same
  temporary folder (run ``apt-get update`` first) unless the files are
  already installed under ``/usr/share``.  The .deb is unpacked with the
  standard library (ar + tar.xz); nothing is installed.

Each source file is checked against its recorded SHA-256 before use, so the
output is exactly reproducible; the script stops if a source differs.
Standard library + numpy + Pillow only.

Usage::

    python scripts/make_eval_set.py [--out edgeseg/data/eval] [--cache DIR]

``--cache`` keeps the downloaded packages in DIR for a later run.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "edgeseg" / "data" / "eval"
MAX_SIDE = 512
QUALITY = 90

# Binary wheels are fetched for CPython 3.11 / manylinux x86-64 whatever
# interpreter runs this script: only their data files are read.
_BIN = [
    "--only-binary=:all:",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--abi", "cp311",
    "--platform", "manylinux_2_28_x86_64",
    "--platform", "manylinux_2_27_x86_64",
    "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
]

# name -> (kind, spec, extra pip args)
PACKAGES = {
    "scikit-learn": ("pip", "scikit-learn==1.9.1", _BIN),
    "scikit-image": ("pip", "scikit-image==0.26.0", _BIN),
    "pywavelets": ("pip", "pywavelets==1.9.0", _BIN),
    "mahotas": ("pip", "mahotas==1.4.19", _BIN),
    "scipy": ("pip", "scipy==1.9.3", _BIN),
    "face_recognition": ("pip", "face_recognition==1.3.0", ["--no-binary=:all:"]),
    "lomiri-wallpapers-16.04": ("deb", "lomiri-wallpapers-16.04=20.04.0-2", []),
    "opencv-doc": ("deb", "opencv-doc=4.6.0+dfsg-12", []),
}

# key -> (package, path inside the package, sha256, loader)
SOURCES = {
    "ascent": ("pywavelets", "pywt/data/ascent.npz",
               "a6d56bc8e96571d6124f34cedeba49f1d3599507f6c890ad9ba538544454e8f7", "npz"),
    "luispedro": ("mahotas", "mahotas/demos/data/luispedro.jpg",
                  "27e7af47501a4e9a06e4d8bd8b834bd773fe7b187baef2f47e120c663524bed1", "image"),
    "obama": ("face_recognition", "face_recognition-1.3.0/tests/test_images/obama.jpg",
              "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6", "image"),
    "biden": ("face_recognition", "face_recognition-1.3.0/tests/test_images/biden.jpg",
              "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c", "image"),
    "obama2": ("face_recognition", "face_recognition-1.3.0/tests/test_images/obama2.jpg",
               "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6", "image"),
    "obama3": ("face_recognition", "face_recognition-1.3.0/tests/test_images/obama3.jpg",
               "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3", "image"),
    "basketball": ("opencv-doc", "usr/share/doc/opencv-doc/examples/data/basketball1.png",
                   "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6", "image"),
    "raccoon": ("scipy", "scipy/misc/face.dat",
                "9d8b0b4d081313e2b485748c770472e5a95ed1738146883d84c7030493e82886", "face_dat"),
    "china": ("scikit-learn", "sklearn/datasets/images/china.jpg",
              "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29", "image"),
    "flower": ("scikit-learn", "sklearn/datasets/images/flower.jpg",
               "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638", "image"),
    "clock": ("scikit-image", "skimage/data/clock_motion.png",
              "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955", "image"),
    "coins": ("scikit-image", "skimage/data/coins.png",
              "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba", "image"),
}
_LOMIRI = {
    "wine": ("Wine_by_Jakkub_Mede.jpg",
             "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74"),
    "dogs": ("friends_by_Aitzol_Berasategi.jpg",
             "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d"),
    "stream": ("life_by_Aitzol_Berasategi.jpg",
               "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05"),
    "mountains": ("picosdeeuropa_by_Aitzol_Berasategi.jpg",
                  "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a"),
    "sunset": ("sunset_by_Aitzol_Berasategi.jpg",
               "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18"),
    "dandelions": ("seeding_by_Clements_Engelhardt.jpg",
                   "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f"),
    "fig": ("Picture_0B_by_freespace.jpg",
            "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"),
    "brushes": ("Picture_1A_by_freespace.jpg",
                "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b"),
    "meadow": ("aitzgorri_by_Aitzol_Berasategi.jpg",
               "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36"),
}
for _k, (_f, _h) in _LOMIRI.items():
    SOURCES[_k] = ("lomiri-wallpapers-16.04", "usr/share/backgrounds/" + _f, _h, "image")

# output file -> (source key, crop box as fractions (x0, y0, x1, y1) or None)
OUTPUTS = {
    # people
    "pywt_ascent_stairs.jpg": ("ascent", None),
    "pywt_ascent_climber.jpg": ("ascent", (0.60, 0.30, 1.00, 0.85)),
    "pywt_ascent_lower_stairs.jpg": ("ascent", (0.00, 0.35, 0.60, 1.00)),
    "mahotas_luispedro_portrait.jpg": ("luispedro", None),
    "facerec_obama_portrait.jpg": ("obama", None),
    "facerec_obama_face.jpg": ("obama", (0.25, 0.00, 0.85, 0.45)),
    "facerec_biden_standing.jpg": ("biden", None),
    "facerec_biden_head.jpg": ("biden", (0.10, 0.00, 0.95, 0.35)),
    "facerec_obama_podium.jpg": ("obama2", None),
    "facerec_obama_room.jpg": ("obama3", None),
    "facerec_obama_room_halfbody.jpg": ("obama3", (0.10, 0.00, 0.90, 0.50)),
    "facerec_obama_room_face.jpg": ("obama3", (0.30, 0.05, 0.70, 0.30)),
    "opencv_basketball_scene.jpg": ("basketball", None),
    "opencv_basketball_player.jpg": ("basketball", (0.00, 0.00, 0.45, 1.00)),
    # no person
    "scipy_raccoon.jpg": ("raccoon", None),
    "sklearn_china_pagoda.jpg": ("china", None),
    "sklearn_flower.jpg": ("flower", None),
    "skimage_clock_blur.jpg": ("clock", None),
    "skimage_coins.jpg": ("coins", None),
    "lomiri_wine_interior.jpg": ("wine", None),
    "lomiri_dogs_window.jpg": ("dogs", None),
    "lomiri_forest_stream.jpg": ("stream", None),
    "lomiri_mountain_path.jpg": ("mountains", None),
    "lomiri_sunset.jpg": ("sunset", None),
    "lomiri_dandelions.jpg": ("dandelions", None),
    "lomiri_fig_bowl.jpg": ("fig", None),
    "lomiri_paint_brushes.jpg": ("brushes", None),
    "lomiri_meadow.jpg": ("meadow", None),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Fetcher:
    """Finds source files installed here, or downloads their package."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.archives: dict[str, Path] = {}

    def installed(self, package: str, inner: str, digest: str) -> bytes | None:
        kind = PACKAGES[package][0]
        roots = [Path(p) for p in sys.path if p and Path(p).is_dir()] if kind == "pip" else [Path("/")]
        for root in roots:
            path = root / inner
            if path.is_file():
                data = path.read_bytes()
                if sha256(data) == digest:
                    print(f"  using installed {path}")
                    return data
        return None

    def archive(self, package: str) -> Path:
        if package in self.archives:
            return self.archives[package]
        kind, spec, extra = PACKAGES[package]
        dest = self.cache / package
        dest.mkdir(parents=True, exist_ok=True)
        found = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".deb")]
        if not found:
            if kind == "pip":
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *extra, spec]
            else:
                cmd = ["apt-get", "download", spec]
            print("  $ " + " ".join(cmd))
            subprocess.run(cmd, check=True, cwd=dest)
            found = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".deb")]
        if len(found) != 1:
            raise SystemExit(f"expected one archive for {spec} in {dest}, found {found}")
        self.archives[package] = found[0]
        return found[0]

    def read(self, package: str, inner: str, digest: str) -> bytes:
        data = self.installed(package, inner, digest)
        if data is None:
            arch = self.archive(package)
            print(f"  reading {inner} from {arch.name}")
            data = read_member(arch, inner)
        if sha256(data) != digest:
            raise SystemExit(f"{package}:{inner} has sha256 {sha256(data)}, expected {digest}")
        return data


def read_member(archive: Path, inner: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(inner)
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            return tf.extractfile(inner).read()
    if archive.suffix == ".deb":
        return read_deb_member(archive, inner)
    raise SystemExit(f"unknown archive type: {archive}")


def read_deb_member(deb: Path, inner: str) -> bytes:
    """Read one file from a .deb (an ar archive holding data.tar.*)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb} is not an ar archive")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tf:
                for candidate in (inner, "./" + inner):
                    try:
                        return tf.extractfile(candidate).read()
                    except KeyError:
                        continue
            raise SystemExit(f"{inner} not in {deb}")
    raise SystemExit(f"no data.tar in {deb}")


def decode(data: bytes, loader: str) -> Image.Image:
    if loader == "npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return Image.fromarray(np.asarray(npz["data"]).astype(np.uint8))
    if loader == "face_dat":  # scipy.misc.face: bz2-compressed raw RGB, 768 x 1024
        arr = np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(768, 1024, 3)
        return Image.fromarray(arr)
    im = Image.open(io.BytesIO(data))
    im = ImageOps.exif_transpose(im)
    return im


def make(im: Image.Image, box) -> Image.Image:
    im = im.convert("L") if im.mode in ("L", "I;16", "I", "1", "LA") else im.convert("RGB")
    if box is not None:
        w, h = im.size
        im = im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    w, h = im.size
    scale = MAX_SIDE / max(w, h)
    if scale < 1:
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return im


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep downloaded packages here (default: a temporary folder)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeseg-eval-") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        fetcher = Fetcher(cache.resolve())
        decoded: dict[str, Image.Image] = {}
        total = 0
        for name, (key, box) in OUTPUTS.items():
            if key not in decoded:
                package, inner, digest, loader = SOURCES[key]
                print(f"{key}: {package} {inner}")
                decoded[key] = decode(fetcher.read(package, inner, digest), loader)
            im = make(decoded[key], box)
            path = args.out / name
            im.save(path, "JPEG", quality=QUALITY)
            size = path.stat().st_size
            total += size
            print(f"  wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
                  f" {im.size[0]}x{im.size[1]} {im.mode} {size // 1024} KiB")
    print(f"{len(OUTPUTS)} images, {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
