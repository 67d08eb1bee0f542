"""Nothing deletes or overwrites what it did not create: render-faces, train, merge, generate and import outputs.

Every tool writes only into a new or empty folder, or one it made itself (recognised by its marker: the
render-faces stamp, `mirror_training.json`), so re-running or resuming keeps working. The user's files stay
byte-identical; the CLI cases run `mirror` as a subprocess (exit code 2, one line, no traceback).
"""

import json
from pathlib import Path

import pytest
from helpers import run_mirror, sample_profiles, sample_records, write_raw

from dataset_builder.build import RENDER_STAMP, render_faces
from dataset_builder.files import check_output_folder
from training.merge import merge_adapter
from training.train import TRAINING_RECORD, check_model_output_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def users_folder(path: Path, name: str = "README.md") -> Path:
    path.mkdir(parents=True)
    (path / name).write_text("# my own notes, not a model card\n")
    return path


@pytest.fixture()
def raw(tmp_path):
    return write_raw(tmp_path / "raw", sample_records(1), sample_profiles()[:1])


def assert_one_line_exit_2(result, *needles: str) -> str:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    # Library FutureWarnings (two lines each: the message and the `warnings.warn` source line) are not ours.
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "Warning: " not in line and not line.strip().startswith("warnings.warn(")
    ]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# The shared check


def test_check_output_folder_allows_new_empty_and_ours_only(tmp_path):
    def ours(folder):
        return (folder / "stamp").is_file()

    assert check_output_folder(tmp_path / "new", flag="--out", ours=ours, what="ours") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", flag="--out", ours=ours, what="ours")
    mine = users_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match=r"--out .*mine is not empty and is not ours; refusing to write into"):
        check_output_folder(mine, flag="--out", ours=ours, what="ours")
    (mine / "stamp").write_text("")
    check_output_folder(mine, flag="--out", ours=ours, what="ours")
    (tmp_path / "afile.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"--out .*afile.txt is a file, not a folder; choose a new folder\."):
        check_output_folder(tmp_path / "afile.txt", flag="--out", ours=ours, what="ours")


# ---------------------------------------------------------------------------------------------------------------
# render-faces


def test_render_faces_refuses_a_users_folder_and_leaves_it_untouched(raw, tmp_path):
    mine = users_folder(tmp_path / "mine6", "sessions.jsonl")
    before = snapshot(mine)
    with pytest.raises(
        FileExistsError, match=rf"not empty and is not an earlier render-faces output \(no {RENDER_STAMP}"
    ):
        render_faces(raw, mine)
    assert snapshot(mine) == before


def test_render_faces_reruns_and_resumes_into_its_own_folder(raw, tmp_path):
    out = render_faces(raw, tmp_path / "rendered")
    assert (out / RENDER_STAMP).is_file() and (out / "sessions.jsonl").is_file()
    images = sorted((out / "images").rglob("*.png"))
    assert images
    # A killed run: the stamp is written first, so a folder with images but no records yet is still ours.
    (out / "sessions.jsonl").unlink()
    images[-1].unlink()
    render_faces(raw, out)
    assert (out / "sessions.jsonl").is_file() and images[-1].is_file()


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_render_faces_bad_input_is_an_error_and_creates_nothing(tmp_path, kind):
    source = tmp_path / "nope"
    if kind == "file":
        source = tmp_path / "afile.txt"
        source.write_text("not records")
    error = FileNotFoundError if kind == "missing" else NotADirectoryError
    with pytest.raises(error, match=rf"--input .*{source.name}"):
        render_faces(source, tmp_path / "rf9")
    assert not (tmp_path / "rf9").exists()


def test_render_faces_cli_refuses_users_folder_in_one_line(raw, tmp_path):
    mine = users_folder(tmp_path / "mine6", "sessions.jsonl")
    before = snapshot(mine)
    result = run_mirror("render-faces", "--input", str(raw), "--output", str(mine), timeout=120)
    assert_one_line_exit_2(result, "mirror render-faces: error:", "--output", "mine6", "not empty")
    assert snapshot(mine) == before


def test_render_faces_cli_missing_input_creates_nothing(tmp_path):
    result = run_mirror("render-faces", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "rf9"))
    assert_one_line_exit_2(result, "--input", "nope", "not found")
    assert "written" not in result.stdout and not (tmp_path / "rf9").exists()


def test_render_faces_cli_output_that_is_a_file(raw, tmp_path):
    target = tmp_path / "afile.txt"
    target.write_text("keep me")
    result = run_mirror("render-faces", "--input", str(raw), "--output", str(target), timeout=120)
    assert_one_line_exit_2(result, "is a file, not a folder; choose a new folder.")
    assert target.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------------------------
# train and merge


def test_model_output_dir_check(tmp_path):
    mine = users_folder(tmp_path / "mine4")
    with pytest.raises(FileExistsError, match=rf"--output_dir .*mine4 is not empty .*no {TRAINING_RECORD}"):
        check_model_output_dir(mine)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / TRAINING_RECORD).write_text("{}")
    check_model_output_dir(tmp_path / "model")  # an earlier model of ours: training again into it is allowed


def test_train_cli_refuses_users_folder_before_loading_anything(tmp_path, sample_dataset_dir, tiny_lm_dir):
    mine = users_folder(tmp_path / "mine4")
    before = snapshot(mine)
    result = run_mirror(
        "train",
        "--dataset_name",
        str(sample_dataset_dir),
        "--model_name_or_path",
        str(tiny_lm_dir),
        "--variant",
        "text",
        "--output_dir",
        str(mine),
        "--use_cpu",
        "true",
        "--bf16",
        "false",
        "--max_steps",
        "1",
        timeout=240,
    )
    assert_one_line_exit_2(result, "mirror train: error:", "--output_dir", "mine4", TRAINING_RECORD)
    assert snapshot(mine) == before and not Path(f"{mine}-checkpoints").exists()


def test_merge_refuses_users_folder_and_a_file(tmp_path):
    adapter = tmp_path / "tr1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "nowhere"}))
    mine = users_folder(tmp_path / "mine5")
    before = snapshot(mine)
    with pytest.raises(FileExistsError, match=r"--output_dir .*mine5 is not empty"):
        merge_adapter(adapter, mine)
    assert snapshot(mine) == before
    (tmp_path / "afile.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        merge_adapter(adapter, tmp_path / "afile.txt")
    assert (tmp_path / "afile.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------------------------
# generate and import: an output path that is a file


def test_generate_and_import_output_that_is_a_file(tmp_path):
    target = tmp_path / "afile.txt"
    target.write_text("keep me")
    result = run_mirror("generate", "--config", "sample-local", "--output_dir", str(target), timeout=120)
    assert_one_line_exit_2(result, "--output_dir", "is a file, not a folder; choose a new folder.")
    result = run_mirror("import", "--source", str(tmp_path / "release"), "--output", str(target), timeout=120)
    assert_one_line_exit_2(result, "--output", "is a file, not a folder; choose a new folder.")
    assert target.read_text() == "keep me"


def test_merge_again_into_its_own_folder(tiny_lm_dir, tmp_path):
    """An adapter without a training record still gets a merged folder that is recognisably ours."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_lm_dir), LoraConfig(r=2, target_modules="all-linear")
    )
    model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_lm_dir).save_pretrained(tmp_path / "adapter")
    merged = merge_adapter(tmp_path / "adapter", tmp_path / "merged", base_model=str(tiny_lm_dir))
    assert json.loads((merged / TRAINING_RECORD).read_text())["merged_from"] == str(tmp_path / "adapter")
    again = merge_adapter(tmp_path / "adapter", merged, base_model=str(tiny_lm_dir))
    assert list(again.glob("*.safetensors"))


def test_merge_reloads_a_text_only_cactus_plan_adapter_as_a_causal_lm(tiny_lm_dir, tmp_path):
    """`cactus_plan` is a text-only variant like `text`: merging its adapter must use the causal-LM class, not
    the vision class (which cannot load a plain Llama)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_lm_dir), LoraConfig(r=2, target_modules="all-linear")
    )
    model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_lm_dir).save_pretrained(tmp_path / "adapter")
    record = {"mirror_args": {"variant": "cactus_plan"}, "card": {"base_model": str(tiny_lm_dir), "variant": "cactus_plan"}}
    (tmp_path / "adapter" / TRAINING_RECORD).write_text(json.dumps(record))
    merged = merge_adapter(tmp_path / "adapter", tmp_path / "merged", base_model=str(tiny_lm_dir))
    assert json.loads((merged / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
