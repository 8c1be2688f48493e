"""Image decoding: every PIL mode a dataset may hold, and the files that cannot be read."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lead.data import image_folder
from lead.extract import extract, load_rgb
from lead.zoo import load_model
from tests.lead.test_zoo import lite0


def pixel(img, xy=(0, 0)):
    return img.getpixel(xy)


def test_modes_decode_to_8bit_rgb(tmp_path):
    Image.new("L", (4, 4), 200).save(tmp_path / "gray.png")
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 250, 100, 50] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "palette.png")
    Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert pixel(load_rgb(tmp_path / "gray.png")) == (200, 200, 200)
    assert pixel(load_rgb(tmp_path / "rgba.png")) == (10, 20, 30)  # alpha dropped, as torchvision's loader does
    assert pixel(load_rgb(tmp_path / "palette.png")) == (250, 100, 50)
    with Image.open(tmp_path / "sixteen.png") as im:
        assert im.mode.startswith("I")
    # 16-bit mid-grey stays mid-grey (PIL's own convert("RGB") would clip it to white)
    assert pixel(load_rgb(tmp_path / "sixteen.png")) == (127, 127, 127)
    assert all(c > 250 for c in pixel(load_rgb(tmp_path / "cmyk.jpg")))
    for name in ("gray.png", "rgba.png", "palette.png", "sixteen.png", "cmyk.jpg"):
        assert load_rgb(tmp_path / name).mode == "RGB"


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path):
    Image.new("RGB", (6000, 4000), (90, 160, 30)).save(tmp_path / "huge.jpg", quality=90)
    img = load_rgb(tmp_path / "huge.jpg", size=(64, 64))
    assert img.size[0] < 6000 and min(img.size) >= 128
    assert all(abs(a - b) <= 3 for a, b in zip(pixel(img), (90, 160, 30)))


def write_bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.png"
    Image.new("L", (28, 28), 128).save(good)
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:40])


@pytest.mark.parametrize("name, error", [("zero.png", "UnidentifiedImageError"), ("text.png", "UnidentifiedImageError"),
                                         ("truncated.png", "")])
def test_unreadable_files_raise_on_load(tmp_path, name, error):
    write_bad_files(tmp_path)
    with pytest.raises(Exception) as info:
        load_rgb(tmp_path / name)
    assert error in type(info.value).__name__


def test_extract_skips_and_names_unreadable_images(tiny_dataset, tmp_path):
    import shutil

    root = shutil.copytree(tiny_dataset, tmp_path / "ds")
    write_bad_files(root / "cat")
    ds = image_folder(root)
    spec = lite0(32)
    batches = list(extract(load_model(spec), spec, ds.samples, ds.classes, batch_size=8, num_workers=0, device="cpu"))
    skipped = dict(s for b in batches for s in b.skipped)
    assert set(skipped) == {"cat/zero.png", "cat/text.png", "cat/truncated.png"}
    assert all(skipped.values())
    ids = [i for b in batches for i in b.sample_ids]
    assert len(ids) == len(ds) - 3 and "cat/good.png" in ids


def write_sideways_jpeg(path):
    """A 160 x 120 picture (red left half, blue right half) stored as a camera does: pixels rotated to
    sensor orientation (120 wide, 160 high) with EXIF Orientation = 6 ("rotate 90 degrees clockwise to view")."""
    upright = Image.new("RGB", (160, 120), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 80, 120))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("size", [None, (32, 32)])
def test_exif_orientation_is_applied(tmp_path, size):
    path = write_sideways_jpeg(tmp_path / "sideways.jpg")
    with Image.open(path) as raw:
        assert raw.size == (120, 160)
    img = load_rgb(path, size)
    assert img.size == (160, 120)
    left, right = pixel(img, (20, 60)), pixel(img, (140, 60))
    assert left[0] > 200 and left[2] < 50, left
    assert right[2] > 200 and right[0] < 50, right
