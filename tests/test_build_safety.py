"""`mirror build` never destroys what it did not create, and handles the input mistakes a new user makes.

Each data-loss case checks that every file is byte-identical afterwards and that the message says why; the CLI
cases run `mirror build` as a subprocess (exit code 2, one line, no traceback).
"""

import json
import os
import re
import stat
from pathlib import Path

import pytest
from helpers import run_mirror, sample_profiles, sample_records, with_images, write_raw

from dataset_builder.build import BUILD_STAMP, build_dataset


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_raw(folder: Path, n: int = 2) -> Path:
    return write_raw(folder, with_images(sample_records(n), folder), sample_profiles()[:1])


@pytest.fixture()
def raw(tmp_path):
    return make_raw(tmp_path / "raw")


# ---------------------------------------------------------------------------------------------------------------
# Data loss


def test_output_equal_to_input_is_refused(raw):
    before = snapshot(raw)
    with pytest.raises(ValueError, match=r"input folder.*delete the raw records"):
        build_dataset(raw, raw)
    assert snapshot(raw) == before


def test_input_inside_output_is_refused(tmp_path):
    nest = tmp_path / "nest"
    raw = make_raw(nest / "raw")
    (nest / "notes.md").write_text("mine")
    before = snapshot(nest)
    with pytest.raises(ValueError, match="inside --output"):
        build_dataset(raw, nest)
    assert snapshot(nest) == before


def test_output_inside_input_is_refused(raw):
    before = snapshot(raw)
    with pytest.raises(ValueError, match="inside the input folder"):
        build_dataset(raw, raw / "built")
    assert snapshot(raw) == before and not (raw / "built").exists()


def test_unrelated_non_empty_folder_is_refused(raw, tmp_path):
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "thesis.txt").write_text("three years of work")
    with pytest.raises(FileExistsError, match="not a previous Mirror build"):
        build_dataset(raw, other)
    assert snapshot(other) == {"thesis.txt": b"three years of work"}


def test_previous_build_with_foreign_file_is_refused(raw, tmp_path):
    out = tmp_path / "mirror"
    build_dataset(raw, out)
    (out / "my_analysis.ipynb").write_text("{}")
    before = snapshot(out)
    with pytest.raises(FileExistsError, match=r"my_analysis\.ipynb"):
        build_dataset(raw, out, force=True)
    assert snapshot(out) == before


def test_previous_build_and_empty_folder_are_replaced(raw, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_dataset(raw, empty).num_rows["sessions"] == 2
    again = build_dataset(raw, empty, force=True)  # a previous build of ours: replaced
    assert not again.up_to_date and (empty / BUILD_STAMP).is_file()


def test_output_that_is_a_file_is_refused(raw, tmp_path):
    target = tmp_path / "dataset"
    target.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file"):
        build_dataset(raw, target)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("case", ["same", "nested", "thesis"])
def test_cli_refuses_data_loss_in_one_line(tmp_path, case):
    raw = make_raw(tmp_path / "nest" / "raw")
    output = {"same": raw, "nested": tmp_path / "nest", "thesis": tmp_path / "thesis"}[case]
    if case == "thesis":
        output.mkdir()
        (output / "thesis.txt").write_text("three years of work")
    before = snapshot(tmp_path)
    proc = run_mirror("build", "--input", str(raw), "--output", str(output))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "refusing" in proc.stderr or "would delete" in proc.stderr or "inside" in proc.stderr
    assert snapshot(tmp_path) == before


def test_built_folder_has_normal_permissions(raw, tmp_path):
    umask = os.umask(0o022)
    try:
        out = build_dataset(raw, tmp_path / "mirror").output_dir
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in out.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & stat.S_IROTH, f"{path} is not readable by others ({oct(mode)})"
        assert not mode & stat.S_IWOTH, f"{path} is world-writable ({oct(mode)})"


# ---------------------------------------------------------------------------------------------------------------
# Input cases


def test_empty_sessions_file_fails_clearly(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "sessions.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"sessions\.jsonl .*holds no session records"):
        build_dataset(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    proc = run_mirror("build", "--input", str(raw), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no session records" in proc.stderr and "Traceback" not in proc.stderr


def test_every_record_dropped_fails_with_reasons(tmp_path):
    records = with_images(sample_records(2), tmp_path / "raw")
    for record in records:
        record["resistance"] = "stubborn"
    raw = write_raw(tmp_path / "raw", records)
    from dataset_builder.build import BuildOptions

    with pytest.raises(ValueError, match=r"no session record survived.*2 x validation: resistance: unknown value"):
        build_dataset(raw, tmp_path / "out", BuildOptions(on_bad_record="skip"))
    assert not (tmp_path / "out").exists()


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    raw = make_raw(tmp_path / "raw")
    path = raw / "sessions.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert build_dataset(raw, tmp_path / "out").num_rows["sessions"] == 2


def test_non_json_line_names_relative_file_and_line_and_is_kept_in_skip_mode(tmp_path):
    from datasets import load_dataset

    from dataset_builder.build import BuildOptions
    from dataset_builder.validation import RecordError

    raw = make_raw(tmp_path / "raw", 3)
    lines = (raw / "sessions.jsonl").read_text().splitlines()
    lines.insert(1, "{this is not json, it was pasted from a spreadsheet")
    (raw / "sessions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as info:
        build_dataset(raw, tmp_path / "strict")
    message = str(info.value)
    assert message.startswith("sessions.jsonl:2: ") and "not valid JSON" in message and str(tmp_path) not in message

    result = build_dataset(raw, tmp_path / "out", BuildOptions(on_bad_record="skip"))
    assert result.num_rows["sessions"] == 3 and result.skipped == 1
    assert any("validation: <record>: not valid JSON" in line and line.strip().startswith("1 x")
               for line in result.drop_summary())
    dropped = load_dataset(str(result.output_dir), "filtered", split="train").filter(lambda r: not r["kept"])
    assert dropped[0]["record"] == "{this is not json, it was pasted from a spreadsheet" and dropped[0]["line"] == 2


def test_skip_mode_prints_a_count_per_reason(tmp_path):
    records = with_images(sample_records(5), tmp_path / "raw")
    records[0]["resistance"] = "stubborn"
    records[1]["resistance"] = "defiant"
    records[2]["cbt_technique"] = "Hypnosis"
    raw = write_raw(tmp_path / "raw", records)
    proc = run_mirror("build", "--input", str(raw), "--output", str(tmp_path / "out"), "--on_bad_record", "skip")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^\s*2 x validation: resistance: unknown value$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\s*1 x validation: cbt_technique: unknown value$", proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize("bad_path", ["../outside.png", "ABSOLUTE", "images/../../outside.png"])
def test_image_paths_outside_the_input_folder_are_refused(tmp_path, bad_path):
    from PIL import Image

    from dataset_builder.validation import RecordError

    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    records = with_images(sample_records(1), tmp_path / "raw")
    first_client = next(t for t in records[0]["turns"] if t["speaker"] == "client")
    first_client["image"] = str(outside) if bad_path == "ABSOLUTE" else bad_path
    raw = write_raw(tmp_path / "raw", records)
    with pytest.raises(RecordError, match="resolves outside the input folder"):
        build_dataset(raw, tmp_path / "out")


def test_a_symlinked_image_folder_inside_the_input_still_works(tmp_path):
    store = tmp_path / "store"
    records = with_images(sample_records(1), store)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "images").symlink_to(store / "images")
    write_raw(raw, records)
    assert build_dataset(raw, tmp_path / "out").num_rows["sessions"] == 1


def test_no_absolute_local_path_in_the_built_dataset(tmp_path):
    from dataset_builder.build import BuildOptions

    records = with_images(sample_records(3), tmp_path / "raw")
    records[1]["turns"][1]["image"] = "images/missing.png"  # an error message that names a file
    raw = write_raw(tmp_path / "raw", records, sample_profiles()[:1])
    (raw / "sessions.jsonl").write_text((raw / "sessions.jsonl").read_text() + "not json\n")
    out = build_dataset(raw, tmp_path / "out", BuildOptions(on_bad_record="skip")).output_dir
    needles = {str(tmp_path).encode(), str(tmp_path.resolve()).encode(), str(Path.home()).encode() + b"/"}
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(needle in data for needle in needles), f"{path.name} holds a local path"
    stamp = json.loads((out / BUILD_STAMP).read_text())
    assert stamp["skipped"] == 2
