"""Every bad-input case raises a RecordError naming the record and the field; odd image modes are normalised."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import sample_records, with_images, write_raw
from PIL import Image

from dataset_builder.build import BuildOptions, build_dataset
from dataset_builder.validation import ImagePolicy, RecordError, iter_jsonl, load_image, to_rgb, validate_session


@pytest.fixture
def record(tmp_path):
    return with_images(sample_records(1), tmp_path)[0]


def first_client_turn(record):
    return next(i for i, t in enumerate(record["turns"]) if t["speaker"] == "client" and t["image"])


def assert_names(err: RecordError, record_id: str, field: str):
    message = str(err)
    assert record_id in message and field in message, message
    assert err.record_id == record_id and err.field == field


def rejection(record, tmp_path, field: str, *policy: ImagePolicy) -> str:
    """`validate_session` raises a RecordError naming the record and `field`; returns its message."""
    with pytest.raises(RecordError) as info:
        validate_session(record, tmp_path, *policy)
    assert_names(info.value, record["id"], field)
    return str(info.value)


def test_valid_record_passes_and_embeds_png(record, tmp_path):
    out = validate_session(record, tmp_path)
    image = out["turns"][first_client_turn(record)]["image"]
    assert image["path"] is None and image["bytes"].startswith(b"\x89PNG")
    assert out["quality"] == {"scores": [], "flags": []}


@pytest.mark.parametrize(
    ("mutate", "field", "expected"),
    [
        (lambda r: r["client"].pop("distorted_thought"), "client.distorted_thought", ["missing"]),
        (lambda r: r.update(mood="grumpy"), "mood", ["unknown field"]),
        (lambda r: r["turns"][1].update(emotion="x"), "turns[1].emotion", []),
        (lambda r: r.update(resistance="passive"), "resistance", ["none", "emotional", "cognitive", "behavioral"]),
        (lambda r: r.update(cbt_technique="Hypnosis"), "cbt_technique", ["Decatastrophizing", "Systematic Exposure"]),
        (lambda r: r.update(turns=[]), "turns", ["empty session"]),
    ],
    ids=[
        "missing",
        "extra",
        "extra_in_turn",
        "unknown_resistance_lists_allowed",
        "unknown_technique_lists_allowed",
        "empty_session",
    ],
)
def test_bad_field_is_named(record, tmp_path, mutate, field, expected):
    mutate(record)
    message = rejection(record, tmp_path, field)
    assert all(word in message for word in expected), message


def test_client_turn_without_image(record, tmp_path):
    index = first_client_turn(record)
    record["turns"][index]["image"] = None
    rejection(record, tmp_path, f"turns[{index}].image")
    # ...and accepted when images are optional
    assert validate_session(record, tmp_path, ImagePolicy(require_images=False))["turns"][index]["image"] is None


def test_non_utf8_text_names_record_and_field(record, tmp_path):
    line = json.dumps(record).replace("Hi Malik", "Hi MALIK_BAD").encode("utf-8")
    assert b"MALIK_BAD" in line
    line = line.replace(b"MALIK_BAD", b"Mal\xe9k")  # Latin-1 byte, not UTF-8
    path = tmp_path / "sessions.jsonl"
    path.write_bytes(line + b"\n")
    ((line_number, err),) = list(iter_jsonl(path))
    assert isinstance(err, RecordError) and line_number == 1
    assert err.record_id == record["id"] and err.field == "turns[1].statement"
    assert "not valid UTF-8" in str(err) and "0xe9" in str(err)


def test_image_file_missing(record, tmp_path):
    index = first_client_turn(record)
    (tmp_path / record["turns"][index]["image"]).unlink()
    assert "missing" in rejection(record, tmp_path, f"turns[{index}].image")


def test_not_an_image(record, tmp_path):
    index = first_client_turn(record)
    (tmp_path / record["turns"][index]["image"]).write_text("definitely not a PNG")
    assert "not an image" in rejection(record, tmp_path, f"turns[{index}].image")


def test_truncated_image(record, tmp_path):
    index = first_client_turn(record)
    path = tmp_path / record["turns"][index]["image"]
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert "truncated or corrupt" in rejection(record, tmp_path, f"turns[{index}].image")


def test_image_above_pixel_cap(record, tmp_path):
    index = first_client_turn(record)
    assert "above the cap" in rejection(record, tmp_path, f"turns[{index}].image", ImagePolicy(max_pixels=40 * 40))


@pytest.mark.parametrize("pillow_limit", [30 * 30, 40 * 40])  # error (> 2x limit) and warning (> limit) paths
def test_decompression_bomb_is_caught(record, tmp_path, monkeypatch, pillow_limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)  # our 48x48 images now look like bombs to Pillow
    index = first_client_turn(record)
    assert "decompression bomb" in rejection(record, tmp_path, f"turns[{index}].image")


def _roundtrip(image: Image.Image, tmp_path: Path, fmt: str = "PNG", **save) -> Image.Image:
    path = tmp_path / f"img.{fmt.lower()}"
    image.save(path, format=fmt, **save)
    data = load_image(path, ImagePolicy(), record_id="r", field_name="f")
    out = Image.open(io.BytesIO(data))
    assert out.mode == "RGB" and out.format == "PNG"
    return out


def test_rgba_alpha_composited_on_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    out = _roundtrip(image, tmp_path)
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((1, 1)) == (255, 255, 255)


def test_la_and_palette_with_transparency(tmp_path):
    la = Image.new("LA", (2, 2), (0, 0))
    assert _roundtrip(la, tmp_path).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    out = _roundtrip(palette, tmp_path, transparency=0)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (0, 255, 0)


def test_cmyk_and_greyscale(tmp_path):
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert _roundtrip(cmyk, tmp_path, fmt="JPEG", quality=100).getpixel((0, 0))[0] > 200
    grey = Image.new("L", (2, 2), 77)
    assert _roundtrip(grey, tmp_path).getpixel((0, 0)) == (77, 77, 77)


def test_16_bit_greyscale_scaled_not_clipped():
    image = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert image.mode.startswith("I;16")
    out = to_rgb(image)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 5, 10))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    out = _roundtrip(image, tmp_path, fmt="JPEG", exif=exif.tobytes(), quality=100)
    assert out.size == (10, 20)
    assert out.getpixel((5, 1))[0] > 200  # the left stripe is now at the top


def test_skip_mode_counts_and_records(tmp_path):
    records = with_images(sample_records(4), tmp_path / "raw")
    records[1]["resistance"] = "passive"
    records[2]["turns"] = []
    raw = write_raw(tmp_path / "raw", records)
    with pytest.raises(RecordError, match="passive"):
        build_dataset(raw, tmp_path / "out-raise")
    assert not (tmp_path / "out-raise").exists()

    result = build_dataset(raw, tmp_path / "out", BuildOptions(on_bad_record="skip"))
    assert result.skipped == 2 and result.num_rows["sessions"] == 2
    from datasets import load_dataset

    filtered = load_dataset(str(tmp_path / "out"), "filtered", split="train")
    dropped = filtered.filter(lambda row: not row["kept"])
    assert sorted(dropped["id"]) == sorted([records[1]["id"], records[2]["id"]])
    reasons = dict(zip(dropped["id"], zip(dropped["field"], dropped["reason"], strict=False), strict=False))
    assert reasons[records[1]["id"]][0] == "resistance" and "passive" in reasons[records[1]["id"]][1]
    assert reasons[records[2]["id"]][0] == "turns" and "empty session" in reasons[records[2]["id"]][1]
    assert json.loads(dropped.filter(lambda r: r["id"] == records[1]["id"])[0]["record"])["resistance"] == "passive"
