"""The pixel size and data bar that SEM consoles record beside the pixels: Tescan's tag,
Hitachi's and JEOL's text files (written here as those consoles write them)."""

import numpy as np
import pytest
import tifffile

from napari_emdiffuse.engine.io.consoles import databar_rows
from napari_emdiffuse.engine.io.images import read_image

HITACHI = (
    "[SemImageFile]\r\nInstructName=SU8230\r\nSerialNumber=123189-06\r\nFormat=tif\r\n"
    "ImageName=hit.tif\r\nDataSize={w}x{h}\r\nPixelSize=4.96094\r\nSignalName=SE(U)\r\n"
    "AcceleratingVoltage=1000 Volt\r\nMagnification=25000\r\n"
)
JEOL = (
    "$CM_FORMAT JEOL/SEM\n$CM_VERSION 1.0\n$CM_INSTRUMENT JSM-7900F\n$CM_LABEL JEOL\n"
    "$CM_FULL_SIZE 1280 960\n$CM_MAG 5000\n$$SM_MICRON_BAR 256\n$$SM_MICRON_MARKER {marker}\n"
    "$SEM_DATA_VERSION 1\n"
)


def _scan(h=10, w=16):
    return (np.arange(h * w) % 200 + 20).astype(np.uint8).reshape(h, w)


def test_a_tescan_tiff_gives_its_pixel_size(tmp_path):
    text = b"\x00\x07TESCAN\x00\x01Description=\r\nDevice=MIRA\r\nMagnification=50000\r\n" \
           b"PixelSizeX=1.5625e-008\r\nPixelSizeY=1.875e-008\r\n"
    path = tmp_path / "mira.tif"
    tifffile.imwrite(path, _scan(), extratags=[(50431, "B", len(text), text, True)])
    img = read_image(path)
    assert img.spacing == (18.75, 15.625) and img.unit == "nm" and img.source == "Tescan tag"
    # the control: the same tag without sizes gives none
    tifffile.imwrite(path, _scan(), extratags=[(50431, "B", 12, b"Device=MIRA\n", True)])
    assert read_image(path).spacing is None
    # Tescan's .hdr beside a TIFF without the tag, and a tag whose text is padded with zeros
    tifffile.imwrite(path, _scan())
    (tmp_path / "mira.hdr").write_text("[MAIN]\r\nDevice=MIRA\r\nPixelSizeX=5e-009\r\nPixelSizeY=5e-009\r\n[SEM]\r\nHV=5000\r\n")
    assert read_image(path).spacing == (5.0, 5.0) and read_image(path).source == "Tescan .hdr file"
    (tmp_path / "mira.hdr").unlink()
    padded = b"".join(bytes([c, 0]) for c in b"PixelSizeX=2e-009\nPixelSizeY=2e-009\n")
    tifffile.imwrite(path, _scan(), extratags=[(50431, "B", len(padded), padded, True)])
    assert read_image(path).spacing == (2.0, 2.0)


@pytest.mark.parametrize("suffix", [".tif", ".bmp"])
def test_a_hitachi_image_takes_its_pixel_size_from_the_text_file_beside_it(tmp_path, suffix):
    import imageio.v3 as iio

    path = tmp_path / f"hit{suffix}"
    (tifffile.imwrite if suffix == ".tif" else iio.imwrite)(path, _scan())
    assert read_image(path).spacing is None  # the control: no text file, no size
    (tmp_path / "hit.txt").write_text(HITACHI.format(w=16, h=10))
    img = read_image(path)
    assert img.spacing == (4.96094, 4.96094) and img.unit == "nm" and img.note is None


@pytest.mark.parametrize("suffix", [".tif", ".bmp"])
def test_a_hitachi_data_bar_below_the_scan_is_left_out(tmp_path, suffix):
    import imageio.v3 as iio

    bar = np.zeros((3, 16), np.uint8)
    bar[1, 2:9] = 255
    path = tmp_path / f"hit{suffix}"
    (tifffile.imwrite if suffix == ".tif" else iio.imwrite)(path, np.concatenate([_scan(), bar]))
    (tmp_path / "hit.txt").write_text(HITACHI.format(w=16, h=10))
    img = read_image(path)
    assert np.array_equal(img.data, _scan()) and img.spacing == (4.96094, 4.96094)
    assert img.note == "the microscope's data bar (3 rows at the bottom) is left out"
    assert databar_rows(path, (13, 16)) == (10, 3)  # as a napari layer's widgets see it
    # the controls: a scan of another width, or as tall as the image, keeps every row
    (tmp_path / "hit.txt").write_text(HITACHI.format(w=32, h=10))
    assert read_image(path).data.shape == (13, 16) and databar_rows(path, (13, 16)) is None
    (tmp_path / "hit.txt").write_text(HITACHI.format(w=16, h=13))
    assert read_image(path).data.shape == (13, 16) and read_image(path).note is None


@pytest.mark.parametrize(("marker", "width", "size"), [
    ("5um", 1280, 19.53125),  # 5000 nm over the bar's 256 pixels
    ("500nm", 1280, 1.953125),
    ("5um", 640, 39.0625),  # saved at half the full size: pixels twice as wide
    ("5 parsecs", 1280, None),
])  # fmt: skip
def test_a_jeol_image_takes_its_pixel_size_from_the_micron_marker(tmp_path, marker, width, size):
    path = tmp_path / "jsm.tif"
    tifffile.imwrite(path, np.zeros((4, width), np.uint8))
    (tmp_path / "jsm.txt").write_text(JEOL.format(marker=marker))
    img = read_image(path)
    assert img.spacing == ((size, size) if size else None)
    assert img.source == ("JEOL text file" if size else None)


def test_a_jeol_data_bar_below_the_full_size_scan_is_left_out(tmp_path):
    path = tmp_path / "jsm.tif"
    tifffile.imwrite(path, np.concatenate([np.full((960, 1280), 7, np.uint8), np.zeros((64, 1280), np.uint8)]))
    (tmp_path / "jsm.txt").write_text(JEOL.format(marker="5um"))
    img = read_image(path)
    assert img.data.shape == (960, 1280) and int(img.data.min()) == 7 and "64 rows" in img.note
    tifffile.imwrite(path, np.zeros((1024, 1000), np.uint8))  # the control: another width keeps its rows
    assert read_image(path).data.shape == (1024, 1000)


def test_a_text_file_of_another_kind_beside_an_image_gives_nothing(tmp_path):
    path = tmp_path / "notes.tif"
    tifffile.imwrite(path, _scan())
    (tmp_path / "notes.txt").write_text("PixelSize=3\nDataSize=16x8\n$$SM_MICRON_BAR 2\n")
    img = read_image(path)
    assert img.spacing is None and img.data.shape == (10, 16)


def test_the_cli_info_shows_a_hitachi_size_and_bar(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    path = tmp_path / "hit.tif"
    tifffile.imwrite(path, np.concatenate([_scan(), np.zeros((2, 16), np.uint8)]))
    (tmp_path / "hit.txt").write_text(HITACHI.format(w=16, h=10))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "10 x 16 uint8" in out and "4.96094 x 4.96094 nm (Hitachi text file)" in out and "data bar (2 rows" in out


def test_olympus_sis_and_tvips_camera_tiffs_give_their_pixel_size():
    """tifffile reads the SIS tag (33560) of Olympus / EMSIS TEM cameras (metres) and TVIPS's
    header (nm); these stand in for its readings."""
    from types import SimpleNamespace

    from napari_emdiffuse.engine.io.consoles import console_pixel_size

    def tif(md, kind="sis"):
        page = SimpleNamespace(tags={}, shape=(8, 8))
        return SimpleNamespace(is_fei=False, is_sem=False, is_sis=kind == "sis" and md is not None, sis_metadata=md,
                               is_tvips=kind == "tvips", tvips_metadata=md,
                               pages=SimpleNamespace(first=page), filehandle=None)  # fmt: skip

    assert console_pixel_size(tif({"pixelsizex": 2.1e-9, "pixelsizey": 2.1e-9, "cameraname": "Veleta"})) == {
        "X": (2.1, "nm"), "Y": (2.1, "nm")}  # fmt: skip
    assert console_pixel_size(tif({"pixelsizex": 0.0, "pixelsizey": 0.0})) == {}  # uncalibrated
    assert console_pixel_size(tif(None)) == {}  # the control: not a SIS file
    # the tag on the second page, after a colour preview (as in HyperSpy's olympus_SIS.tif)
    later = SimpleNamespace(tags={33560: SimpleNamespace(value={"pixelsizex": 2.4e-11, "pixelsizey": 2.4e-11})})
    class Pages(list):
        first = property(lambda self: self[0])

    two = tif(None)
    two.pages = Pages([two.pages.first, later])
    assert console_pixel_size(two) == {"X": (0.024, "nm"), "Y": (0.024, "nm")}
    # TVIPS EM-MENU: the version 2 header's sizes are nm (tifffile leaves them so)
    assert console_pixel_size(tif({"Version": 2, "PixelSizeX": 0.85, "PixelSizeY": 0.85}, "tvips")) == {
        "X": (0.85, "nm"), "Y": (0.85, "nm")}  # fmt: skip
    assert console_pixel_size(tif({"Version": 1, "PhysicalPixelSize": 15.6}, "tvips")) == {}


def test_a_zeiss_data_zone_below_the_line_counter_is_left_out(tmp_path):
    """SmartSEM's data zone: the scan stops at the Line Counter and a banner (one background
    value, text of another) fills the rows below."""
    rng = np.random.default_rng(0)
    scan = (rng.random((92, 128)) * 180 + 30).astype(np.uint8)
    zone = np.zeros((36, 128), np.uint8)
    zone[10:14, 8:60] = 255  # the zone's text
    zone[20:23, 70:120] = 255
    tag = "0\r\n0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 5 nm\r\nAP_LINE_COUNTER\r\nLine Counter = 92\r\n"
    path = tmp_path / "zeiss.tif"
    tifffile.imwrite(path, np.concatenate([scan, zone]), extratags=[(34118, "B", 0, tag.encode("latin-1"), True)])
    img = read_image(path)
    assert np.array_equal(img.data, scan) and img.spacing == (5.0, 5.0) and "36 rows" in img.note
    assert databar_rows(path, (128, 128)) == (92, 36)
    # the controls: rows below the counter that are image (a scan frozen early), or no counter
    tifffile.imwrite(path, np.concatenate([scan, scan[:36]]), extratags=[(34118, "B", 0, tag.encode("latin-1"), True)])
    assert read_image(path).data.shape == (128, 128) and read_image(path).note is None
    plain = tag.replace("AP_LINE_COUNTER\r\nLine Counter = 92\r\n", "")
    tifffile.imwrite(path, np.concatenate([scan, zone]), extratags=[(34118, "B", 0, plain.encode("latin-1"), True)])
    assert read_image(path).data.shape == (128, 128)
