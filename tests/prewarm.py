"""Cold caches made in the background while the rest of the suite runs (CI's 2 cores: pytest keeps ~1 busy).

What the emulated-device tests need and a fresh machine lacks takes minutes to
make: the Debian 12 arm64 root (3.5-11 min), the armhf root (6-15 min) and the
armhf device wheels (ncnn compiled, numpy/Pillow repacked: ~5 min). When the
collected tests need one that is not cached, :func:`start` runs this file as a
``nice``'d background process at collection; ``conftest.py`` moves those tests
to the end of the run, so by then the caches are usually made. Each cache is
built under a ``flock`` (:func:`arm64.arm64_rootfs`, :mod:`edgeseg.crossbuild`):
a test that needs one before it is done waits for the background build instead
of making a second one, and if the background process failed, the test builds
it itself and reports the error. The process is not stopped when the session
ends (a debootstrap killed half-way can leave its mounts behind): it finishes
what it started, then exits, and the next session finds the caches made.

Its output goes to ``<cache>/prewarm.log``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: test modules -> the caches they need
NEEDS = {
    "test_arm64_device.py": ("arm64",),
    "test_device_pythons.py": ("arm64",),
    "test_armhf_device.py": ("armhf-wheels", "armhf"),
    "test_crossbuild.py": ("armhf-wheels",),
}
#: where the suite keeps cross-built device wheels between runs (conftest.py sets EDGESEG_CROSSBUILD_DIR to it)
CROSSBUILD_DIR = Path.home() / ".cache" / "edgeseg-tests" / "crossbuild"
_proc: subprocess.Popen[bytes] | None = None


def _missing(name: str) -> bool:
    from arm64 import RECIPES, cache_dir, can_emulate, recipe_digest

    if name in ("arm64", "armhf"):
        recipe = RECIPES[name]
        cached = cache_dir() / f"debian-{recipe['suite']}-{recipe['arch']}-{recipe_digest(name)}.tar.zst"
        return not cached.is_file() and can_emulate(name) == ""
    return shutil.which("arm-linux-gnueabihf-g++") is not None  # cheap to find cached: the build itself checks


def start(test_files: set[str]) -> None:
    """Start the background process for what ``test_files`` need and is not cached (no-op when nothing is)."""
    global _proc
    wanted = [n for f in sorted(test_files) for n in NEEDS.get(f, ())]
    todo = [n for n in dict.fromkeys(wanted) if _missing(n)]
    if not todo or _proc is not None or os.environ.get("EDGESEG_PREWARM"):
        return  # EDGESEG_PREWARM: a pytest run inside this one (tests/test_packaging.py) leaves it to the outer one
    os.environ["EDGESEG_PREWARM"] = "started"
    from arm64 import cache_dir

    cache_dir().mkdir(parents=True, exist_ok=True)
    log = open(cache_dir() / "prewarm.log", "ab")  # noqa: SIM115 (the child writes it)
    env = {**os.environ, "EDGESEG_CROSSBUILD_DIR": os.environ.get("EDGESEG_CROSSBUILD_DIR", str(CROSSBUILD_DIR)),
           "EDGESEG_CACHE_DIR": tempfile.mkdtemp(prefix="edgeseg-prewarm-cache-")}
    _proc = subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, *todo], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def _make(name: str) -> None:
    from arm64 import arm64_rootfs

    if name in ("arm64", "armhf"):
        with tempfile.TemporaryDirectory(prefix=f"prewarm-{name}-") as tmp:
            arm64_rootfs(Path(tmp) / "unused", arch=name, unpack=False)
        return
    import edgeseg

    with tempfile.TemporaryDirectory(prefix="prewarm-armhf-") as tmp:  # makes the wheels with the model's layers
        edgeseg.build(target="armhf", out_dir=Path(tmp), report=print)


if __name__ == "__main__":
    for item in sys.argv[1:]:
        print(f"prewarm: {item}", flush=True)
        try:
            _make(item)
        except Exception as exc:  # noqa: BLE001 (the test that needs it builds it again and fails there)
            print(f"prewarm: {item} failed: {exc}", flush=True)
    shutil.rmtree(os.environ["EDGESEG_CACHE_DIR"], ignore_errors=True)  # the private cache start() made
