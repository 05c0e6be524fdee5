#!/usr/bin/env python3
"""Make the grey-scale nucleus segmentation model the tests use as a third-party-style model.

The data is real: stardist 0.9.2's ``stardist/data/images/img2d.tif`` (a 512x512 16-bit fluorescence
image of nuclei whose values lie in 0..235) and ``mask2d.tif`` (its 183 annotated nuclei), from the
2018 Kaggle Data Science Bowl as stardist's ``test_image_nuclei_2d`` says. The wheel is fetched with
``python -m pip download --no-deps stardist==0.9.2`` (or given with ``--wheel``), both files are
checked against their SHA-256, and written to ``tests/data/nuclei/`` as 16-bit PNGs (``img2d.png``
with the exact values; ``mask2d.png`` foreground 1, background 0).

The model is a small U-Net trained here (PyTorch, CPU, seeded) on random 256x256 crops of that
image and mask, as a user's own trained model would be, then exported the way a TensorFlow/Keras user's
would arrive: NHWC, one channel, float32 ``(x - 32) / 24`` of the raw 16-bit values (the image's mean and
standard deviation, rounded; this is the model's documented pre-processing), a 2-class soft-max output
``[1, 256, 256, 2]`` (background, nucleus). It is written to ``tests/data/nuclei/nuclei_unet.onnx``
(about 380 kB) with ``tests/data/nuclei/README.md`` naming what it is.

Usage::

    python scripts/train_nuclei_unet.py [--wheel stardist-0.9.2-...whl] [--steps 400]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "nuclei"
SOURCES = {
    "stardist/data/images/img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    "stardist/data/images/mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
}
#: the model's documented pre-processing: (x - MEAN) / STD on the raw 16-bit values
MEAN, STD = 32.0, 24.0
CROP = 256


def fetch(wheel: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The image (uint16) and the nucleus mask (bool) from the stardist wheel, checked by SHA-256."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "stardist==0.9.2",
                            "-d", tmp], check=True)
            wheel = next(Path(tmp).glob("stardist-0.9.2-*.whl"))
        arrays = []
        with zipfile.ZipFile(wheel) as zf:
            for name, digest in SOURCES.items():
                data = zf.read(name)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise SystemExit(f"{name} in {wheel.name} does not match its recorded SHA-256")
                path = Path(tmp) / Path(name).name
                path.write_bytes(data)
                arrays.append(np.asarray(Image.open(path)))
    return arrays[0].astype(np.uint16), arrays[1] > 0


def save_png16(values: np.ndarray, path: Path) -> None:
    img = Image.frombytes("I;16", (values.shape[1], values.shape[0]), values.astype("<u2").tobytes())
    img.save(path, format="PNG")


def train(image: np.ndarray, mask: np.ndarray, steps: int):  # noqa: ANN201
    import torch
    from torch import nn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e1, self.e2, self.e3 = block(1, 16), block(16, 32), block(32, 48)
            self.u2, self.d2 = nn.ConvTranspose2d(48, 32, 2, stride=2), block(64, 32)
            self.u1, self.d1 = nn.ConvTranspose2d(32, 16, 2, stride=2), block(32, 16)
            self.head = nn.Conv2d(16, 2, 1)

        def forward(self, x):  # noqa: ANN001, ANN202
            e1 = self.e1(x)
            e2 = self.e2(nn.functional.max_pool2d(e1, 2))
            e3 = self.e3(nn.functional.max_pool2d(e2, 2))
            d2 = self.d2(torch.cat([self.u2(e3), e2], 1))
            return self.head(self.d1(torch.cat([self.u1(d2), e1], 1)))

    net = UNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x_all = (image.astype(np.float32) - MEAN) / STD
    for step in range(steps):
        xs, ys = [], []
        for _ in range(8):
            y0, x0 = rng.integers(0, image.shape[0] - CROP + 1), rng.integers(0, image.shape[1] - CROP + 1)
            xc, yc = x_all[y0:y0 + CROP, x0:x0 + CROP], mask[y0:y0 + CROP, x0:x0 + CROP]
            k = int(rng.integers(0, 4))
            xs.append(np.rot90(xc, k).copy())
            ys.append(np.rot90(yc, k).copy())
        xb = torch.from_numpy(np.stack(xs))[:, None]
        yb = torch.from_numpy(np.stack(ys).astype(np.int64))
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    return net.eval()


def export(net, path: Path) -> None:  # noqa: ANN001
    import torch

    class Keras(torch.nn.Module):
        """NHWC in, NHWC soft-max out, as a Keras model converted with tf2onnx arrives."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):  # noqa: ANN001, ANN202
            return torch.softmax(self.inner(x.permute(0, 3, 1, 2)), dim=1).permute(0, 2, 3, 1)

    torch.onnx.export(Keras(net), torch.zeros(1, CROP, CROP, 1), str(path), input_names=["image"],
                      output_names=["softmax"], opset_version=17, dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="stardist-0.9.2 wheel (default: pip download it)")
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    image, mask = fetch(args.wheel)
    save_png16(image, OUT / "img2d.png")
    save_png16(mask.astype(np.uint16), OUT / "mask2d.png")
    net = train(image, mask, args.steps)
    export(net, OUT / "nuclei_unet.onnx")
    import torch

    with torch.no_grad():
        x = torch.from_numpy((image.astype(np.float32) - MEAN) / STD)[None, None]
        pred = net(x[..., :CROP, :CROP]).argmax(1)[0].numpy().astype(bool)
    truth = mask[:CROP, :CROP]
    print(f"IoU on the top-left crop: {np.sum(pred & truth) / np.sum(pred | truth):.3f}")


if __name__ == "__main__":
    main()
