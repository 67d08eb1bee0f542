"""The Hub-ready folder: loads with `load_dataset` (all configs, fresh process), TRL accepts the sft rows, the
therapist never sees stage directions, builds are atomic and re-runs are no-ops with byte-identical parquet."""

import json
from pathlib import Path

import pytest
from helpers import offline_env, run_python, sample_profiles, sample_records, with_images, write_raw

from dataset_builder.build import build_dataset
from dataset_builder.schema import SESSION_FEATURES
from dataset_builder.validation import RecordError, validate_session

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    profiles = sample_profiles()[:2]
    return write_raw(raw, with_images(sample_records(4), raw), profiles)


@pytest.fixture(scope="module")
def small_built(small_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "mirror"
    build_dataset(small_raw, out)
    return out


def test_schema_round_trip(tmp_path):
    from datasets import Dataset, load_dataset

    records = [validate_session(r, tmp_path) for r in with_images(sample_records(2), tmp_path)]
    Dataset.from_list(records, features=SESSION_FEATURES).to_parquet(str(tmp_path / "s.parquet"))
    loaded = load_dataset("parquet", data_files=str(tmp_path / "s.parquet"), split="train")
    assert loaded.features == SESSION_FEATURES
    for original, row in zip(records, loaded, strict=False):
        assert row["id"] == original["id"] and row["client"] == original["client"]
        for turn_in, turn_out in zip(original["turns"], row["turns"], strict=False):
            assert turn_out["statement"] == turn_in["statement"]
            assert turn_out["stage_direction"] == turn_in["stage_direction"]
            if turn_in["image"] is None:
                assert turn_out["image"] is None
            else:
                from io import BytesIO

                from PIL import Image

                assert list(turn_out["image"].getdata()) == list(Image.open(BytesIO(turn_in["image"]["bytes"])).getdata())


def test_folder_layout_and_card(small_built):
    files = sorted(p.relative_to(small_built).as_posix() for p in small_built.rglob("*") if p.is_file())
    assert "README.md" in files and not any(f.endswith(".py") for f in files)
    for config in ("sessions", "sft", "profiles", "filtered"):
        assert any(f.startswith(f"data/{config}/") and f.endswith(".parquet") for f in files), config
    card = (small_built / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and "config_name: sft" in card
    assert "Research use only" in card and "cc-by-4.0" in card


def test_load_dataset_in_fresh_process_all_configs(small_built, tmp_path):
    # A fresh interpreter in an unrelated working directory, offline, with an empty HF cache.
    script = f"""
import json
from datasets import load_dataset, Image
folder = {str(small_built)!r}
out = {{}}
sessions = load_dataset(folder, split="train")
turn_image = next(t["image"] for t in sessions[0]["turns"] if t["image"] is not None)
out["sessions"] = [len(sessions), type(turn_image).__name__, turn_image.mode,
                   isinstance(sessions.features["turns"].feature["image"], Image)]
sft = load_dataset(folder, "sft", split="train")
out["sft"] = [len(sft), sorted(set(sft["variant"])), isinstance(sft.features["images"].feature, Image)]
profiles = load_dataset(folder, "profiles", split="test")
out["profiles"] = [len(profiles), profiles[0]["resistance"]]
filtered = load_dataset(folder, "filtered", split="train")
out["filtered"] = [len(filtered), sum(filtered["kept"])]
print(json.dumps(out))
"""
    proc = run_python("-c", script, cwd=tmp_path, env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sessions"] == [4, "PngImageFile", "RGB", True]
    assert out["sft"][1] == ["base", "cactus_plan", "ec_planning", "planning", "text"] and out["sft"][2] is True
    assert out["profiles"][0] == 2
    assert out["filtered"] == [6, 6]


def test_sft_rows_accepted_by_trl_and_free_of_stage_directions(small_built):
    from datasets import load_dataset
    from trl.data_utils import prepare_multimodal_messages

    sessions = load_dataset(str(small_built), split="train")
    directions = {t["stage_direction"] for s in sessions for t in s["turns"] if t["stage_direction"]}
    sft = load_dataset(str(small_built), "sft", split="train")
    n_therapist = sum(1 for s in sessions for t in s["turns"] if t["speaker"] == "therapist")
    responses = sft.filter(lambda r: r["task"] == "response")
    for variant in ("base", "planning", "ec_planning", "text", "cactus_plan"):
        assert sum(1 for v in responses["variant"] if v == variant) == n_therapist, variant
    for row in sft:
        prepared = prepare_multimodal_messages(row["messages"], row["images"])
        blocks = [b for m in prepared for b in m["content"]]
        image_blocks = [b for b in blocks if b["type"] == "image"]
        text_only = row["variant"] in ("text", "cactus_plan") or row["task"] == "plan"  # plan rows: profile only
        assert len(image_blocks) == len(row["images"]) == (0 if text_only else 1)
        assert all(b["image"] is not None for b in image_blocks)
        assert [m["role"] for m in prepared] == ["user", "assistant"]
        if row["task"] == "response":
            user_text = " ".join(b["text"] for b in row["messages"][0]["content"] if b["type"] == "text")
            assert "[" not in user_text
            if row["variant"] != "ec_planning":  # ec_planning carries the caption of the face on purpose
                assert not any(d in user_text for d in directions), row["id"]


def test_sft_image_is_latest_client_face(small_built):
    from datasets import load_dataset

    sessions = {s["id"]: s for s in load_dataset(str(small_built), split="train")}
    sft = load_dataset(str(small_built), "sft", split="train").filter(lambda r: r["variant"] == "base")
    for row in sft.select(range(5)):
        turns = sessions[row["session_id"]]["turns"]
        latest = next(t for t in reversed(turns[: row["turn_index"]]) if t["speaker"] == "client")
        assert list(row["images"][0].getdata()) == list(latest["image"].getdata())
        assert row["messages"][1]["content"][0]["text"] == turns[row["turn_index"]]["statement"]


def test_rebuild_is_noop_and_byte_identical(small_raw, tmp_path):
    out = tmp_path / "mirror"
    first = build_dataset(small_raw, out)
    assert not first.up_to_date
    parquet = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    card = (out / "README.md").read_bytes()
    assert build_dataset(small_raw, out).up_to_date
    again = build_dataset(small_raw, out, force=True)  # a real rebuild
    assert not again.up_to_date
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == parquet
    assert (out / "README.md").read_bytes() == card


def test_failed_build_is_atomic(small_raw, tmp_path):
    out = tmp_path / "mirror"
    build_dataset(small_raw, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad"
    records = [json.loads(line) for line in (small_raw / "sessions.jsonl").read_text().splitlines()]
    records[-1]["cbt_technique"] = "Hypnosis"  # the last record fails after others were generated
    write_raw(bad, records)
    (bad / "images").symlink_to(small_raw / "images")
    with pytest.raises(RecordError, match="Hypnosis"):
        build_dataset(bad, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # old folder untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-built leftovers
    with pytest.raises(RecordError):
        build_dataset(bad, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_quality_filters_drop_and_explain(tmp_path):
    records = with_images(sample_records(3), tmp_path / "raw")
    therapist = next(i for i, t in enumerate(records[0]["turns"]) if t["speaker"] == "therapist")
    records[0]["turns"][therapist]["statement"] = "I don't know."
    therapist = next(i for i, t in enumerate(records[1]["turns"]) if t["speaker"] == "therapist")
    records[1]["turns"][therapist]["statement"] = "okay okay okay okay okay okay okay okay okay okay"
    result = build_dataset(write_raw(tmp_path / "raw", records), tmp_path / "out")
    assert result.filtered == 2 and result.num_rows["sessions"] == 1
    from datasets import load_dataset

    dropped = load_dataset(str(tmp_path / "out"), "filtered", split="train").filter(lambda r: not r["kept"])
    by_id = {row["id"]: row for row in dropped}
    assert by_id[records[0]["id"]]["field"] == "therapist_failure"
    assert by_id[records[1]["id"]]["field"] == "word_repetition"
    assert all(row["stage"] == "filter" for row in dropped)


def test_cli_build_reports_bad_record(tmp_path):
    records = with_images(sample_records(2), tmp_path / "raw")
    records[1]["resistance"] = "stubborn"
    raw = write_raw(tmp_path / "raw", records)
    env = offline_env(tmp_path)
    cmd = [ROOT / "mirror_cli.py", "build", "--input", raw, "--output", tmp_path / "o"]
    proc = run_python(*cmd, env=env)
    assert proc.returncode == 2
    assert records[1]["id"] in proc.stderr and "resistance" in proc.stderr and "stubborn" in proc.stderr
    proc = run_python(*cmd, "--on-bad-record", "skip", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Skipped 1 bad record" in proc.stdout and "load_dataset" in proc.stdout


def test_render_faces_resumes_and_is_deterministic(tmp_path):
    from dataset_builder.build import render_faces

    raw = write_raw(tmp_path / "raw", sample_records(2), sample_profiles()[:1])
    out = render_faces(raw, tmp_path / "faces")
    images = sorted((out / "images").rglob("*.png"))
    records = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    client_turns = [t for r in records for t in r["turns"] if t["speaker"] == "client"]
    assert all(t["image"] and (out / t["image"]).is_file() for t in client_turns)
    assert records[0]["source"]["image_backend"] == "embedded-face-renderer-v2"
    assert len(images) == len(client_turns) + 3  # + one identity face per client (2 sessions, 1 profile)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in images}
    images[0].unlink()  # an interrupted run: one face missing
    render_faces(raw, tmp_path / "faces")
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "images").rglob("*.png"))}
    assert after[images[0]][1] == before[images[0]][1]  # re-rendered identically
    assert all(after[p] == before[p] for p in images[1:])  # the rest untouched, not redrawn
    assert build_dataset(out, tmp_path / "built").num_rows["sessions"] == 2
