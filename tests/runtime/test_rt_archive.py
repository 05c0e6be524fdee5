"""In this process, on this interpreter: ``load_image`` on the photos, ``Archive.open`` on .tar.gz and folder."""

from __future__ import annotations

import numpy as np
import pytest
from edgeseg_runtime import Segmentor, load_image
from edgeseg_runtime.archive import Archive, sha256_file


def test_load_image_on_every_photo(shipped, shown_size) -> None:
    photos = shipped.photos()
    assert len(photos) >= 3, f"{shipped.images}: too few photos to mean anything"
    for photo in photos:
        rgb = load_image(photo)
        w, h = shown_size(photo)
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous, photo.name
        assert rgb.std() > 5, f"{photo.name}: a flat image (decoding went wrong)"


@pytest.mark.extended
def test_archive_open_tar_gz_and_folder_agree(shipped, manifest) -> None:
    with Archive.open(shipped.archive) as packed, Archive.open(shipped.unpacked) as folder:
        temp_root = packed.root
        assert folder.root == shipped.unpacked and temp_root != folder.root
        assert packed.source == shipped.archive and packed.name == folder.name == manifest.name
        assert packed.manifest_bytes == folder.manifest_bytes
        assert packed.pipeline_spec == folder.pipeline_spec
        assert dict(packed.manifest.files) == dict(folder.manifest.files)
        unpacked = sorted(p.relative_to(temp_root).as_posix() for p in temp_root.rglob("*") if p.is_file())
        extra = ["manifest.sig"] if packed.signature is not None else []
        assert unpacked == sorted([*manifest.files, "manifest.json", *extra])
        golden = manifest.golden[0].image
        assert sha256_file(packed.path(golden)) == manifest.files[golden].sha256
    assert not temp_root.exists(), "the temporary extraction outlived the with block"
    assert shipped.unpacked.is_dir()  # a folder is opened in place, never removed


@pytest.mark.extended
def test_segmentor_in_process(shipped, manifest, shown_size) -> None:
    photo = shipped.photos()[-1]
    with Archive.open(shipped.unpacked) as archive, Segmentor(archive) as seg:
        result = seg.segment(load_image(photo))
    w, h = shown_size(photo)
    assert result.labels.shape == (h, w)
    assert int(result.labels.max()) < len(manifest.model.classes)
