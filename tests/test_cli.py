"""The `mirror` command: every subcommand built from its dataclasses, and user mistakes as one line + exit 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_mirror

import mirror_cli

REPO = Path(__file__).resolve().parent.parent
REGISTERED = [name for name, (module, _, _) in mirror_cli.COMMANDS.items() if mirror_cli._available(module)]


def test_top_level_help_lists_the_registered_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mirror_cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in REGISTERED:
        assert f"    {name}" in out and mirror_cli.COMMANDS[name][2].split()[0] in out
    assert {"build", "render-faces", "train", "merge", "chat", "demo", "quickstart"} <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_help_shows_each_options_help_and_default(name, capsys, monkeypatch):
    """Help text and defaults come from the dataclass fields, once; both flag spellings are accepted."""
    import dataclasses

    monkeypatch.setenv("COLUMNS", "100000")  # no line wrapping, so each help text appears whole
    parser = mirror_cli.make_command_parser(name)
    with pytest.raises(SystemExit) as exit_info:
        mirror_cli.main([name, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: mirror {name}")
    arguments, _, description = mirror_cli.command_parts(name)
    assert " ".join(description.split()) in text  # every command has a description (quickstart included)
    for cls in arguments:
        for item in dataclasses.fields(cls):
            if not item.init:
                continue
            assert f"--{item.name}" in text, f"{name}: --{item.name} missing"
            if "_" in item.name:
                assert f"--{item.name.replace('_', '-')}" in text
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest.startswith("no_"):
            continue
        assert action.help, f"{name}: {action.option_strings} has no help"
        assert " ".join(action.help.replace("%%", "%").split()) in text
        if "default" in action.help.lower():  # the help says its default in words: argparse adds none
            assert f"{' '.join(action.help.replace('%%', '%').split())} (default:" not in text, action.dest
        elif not action.required:
            assert f"(default: {action.default})" in text or f"(default: {action.default!r})" in text, action.dest


def test_train_help_names_config_in_its_usage(capsys):
    with pytest.raises(SystemExit):
        mirror_cli.main(["train", "--help"])
    assert capsys.readouterr().out.startswith("usage: mirror train [--config RECIPE]")


def test_kebab_and_snake_case_flags_are_the_same_option():
    snake = mirror_cli.parse_command("chat", ["--model", "m", "--max_new_tokens", "7", "--client_profile", "p"])
    kebab = mirror_cli.parse_command("chat", ["--model", "m", "--max-new-tokens", "7", "--client-profile", "p"])
    assert snake == kebab and snake[2].max_new_tokens == 7


def test_build_max_pixels_default_is_the_validators():
    from dataset_builder.validation import ImagePolicy

    (args,) = mirror_cli.parse_command("build", ["--input", "i", "--output", "o"])
    assert args.max_pixels == ImagePolicy.max_pixels


def test_library_errors_become_one_line_and_exit_2(monkeypatch, capsys):
    import training.merge

    def fails(*args):
        raise FileNotFoundError("no adapter in 'x'\n  (second line of detail)")

    monkeypatch.setattr(training.merge, "main", fails)
    assert mirror_cli.main(["merge", "--model", "x", "--output_dir", "y"]) == 2
    err = capsys.readouterr().err
    assert err == "mirror merge: error: no adapter in 'x' (second line of detail)\n"

    monkeypatch.setenv("MIRROR_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        mirror_cli.main(["merge", "--model", "x", "--output_dir", "y"])


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import training.merge

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.merge, "main", interrupted)
    assert mirror_cli.main(["merge", "--model", "x", "--output_dir", "y"]) == 130
    assert capsys.readouterr().err.strip() == "mirror merge: interrupted"


def test_train_runs_from_another_folder_with_a_bundled_recipe_name(tmp_path):
    """The quickstart's closing hint works from any folder: recipes are package data, named without a path."""
    for recipe in ("llava-1.5-7b/base", "recipes/llava-1.5-7b/base.yaml"):
        result = run_mirror("train", "--config", recipe, "--dataset_name", str(tmp_path / "none"), "--use_cpu",
                            "true", "--bf16", "false", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.startswith("mirror train: error: Dataset folder") and "does not exist" in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_python_m_training_train_is_the_same_command(tmp_path):
    """`accelerate launch -m training.train --config ...` runs this entry point."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "training.train", "--config", "tiny/base", "--dataset_name", str(tmp_path / "x")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("python -m training.train: error: --model_name_or_path is required"), result.stderr
    result = subprocess.run([*command[:3], "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m training.train [--config RECIPE]")


def test_train_without_a_recipe_says_what_is_required(tmp_path):
    """Not TrainingArguments' bf16 refusal and a FutureWarning from the defaults: one line naming the options."""
    result = run_mirror("train", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mirror train: error: --config is required")
    assert "--dataset_name and --model_name_or_path" in result.stderr


TRAIN_CASES = {
    "no model": ([], "--model_name_or_path is required: a model folder (e.g. one written by `training.tiny."),
    "missing model folder": (["--model_name_or_path", "{t}/nope"], "--model_name_or_path {t}/nope: no such folder"),
    "dataset is a file": (["--model_name_or_path", "x", "--dataset_name", "{t}/notes.txt"], "is a file, not a"),
    "mistyped option": (["--max_stpes", "3"], "unrecognized arguments: --max_stpes 3 (see `mirror train --help`)"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_mistakes_are_one_line_naming_the_option(case, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a dataset\n")
    extra, expected = TRAIN_CASES[case]
    argv = ["train", "--config", "tiny/base", "--dataset_name", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    assert mirror_cli.main([*argv, *(item.format(t=tmp_path) for item in extra)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mirror train: error: ")
    assert expected.format(t=tmp_path) in err, err


def test_bf16_on_a_cpu_gets_a_hint(tmp_path):
    result = run_mirror("train", "--config", "llava-1.5-7b/base", "--use_cpu", "false", cwd=tmp_path)
    if result.returncode == 2 and "bf16" in result.stderr:  # no GPU here: TrainingArguments refuses bf16
        assert "--use_cpu true --bf16 false" in result.stderr and result.stderr.count("\n") == 1


def _dataset_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror_dataset"
    (folder / "data" / "sft").mkdir(parents=True)
    (folder / "data" / "sft" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (folder / "README.md").write_text("---\nconfigs: []\n---\n")
    return folder


CASES = {
    "missing image": (lambda t: ["--model", "someone/model", "--image", str(t / "nope.png")], "no such file"),
    "text file as image": (lambda t: ["--model", "someone/model", "--image", str(t / "notes.txt")], "not an image"),
    "unknown model offline": (lambda t: ["--model", "someone/no-such-model"], "HF_HUB_OFFLINE=1"),
    "mistyped local path": (lambda t: ["--model", str(t / "outputs" / "mirror-tiny-bse")], "no such folder"),
    "folder as image": (lambda t: ["--model", "someone/model", "--image", str(t)], "is a folder"),
    "dataset folder as model": (lambda t: ["--model", str(_dataset_folder(t))], "is a Mirror dataset folder"),
}


@pytest.mark.parametrize("command", ["chat", "demo"])
@pytest.mark.parametrize("case", list(CASES))
def test_user_mistakes_are_one_line_exit_2(command, case, tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture\n")
    argv, expected = CASES[case]
    result = run_mirror(command, *argv(tmp_path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mirror {command}: error: ") and expected in lines[0], lines


STAGE_CASES = {
    "build from a file": (["build", "--input", "{t}/notes.txt", "--output", "{t}/o"], "is a file, not a folder"),
    "import into a non-empty folder": (
        ["import", "--source", "{t}/notes.txt", "--output", "{t}"],
        "is not empty (pass --overwrite to replace",
    ),
    "merge a missing adapter": (["merge", "--model", "{t}/nope", "--output_dir", "{t}/o"], "/nope': no such folder"),
}


@pytest.mark.parametrize("case", list(STAGE_CASES))
def test_stage_mistakes_name_the_option(case, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a record\n")
    argv, expected = STAGE_CASES[case]
    assert mirror_cli.main([item.format(t=tmp_path) for item in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mirror {argv[0]}: error: ") and expected in err, err


def test_wheel_ships_the_recipes_and_every_data_file(tmp_path):
    """A non-editable install finds `--config llava-1.5-7b/base`: recipes and other data files are package data.
    Built from a copy of the tracked files, so the checkout gets no build/ folder."""
    import shutil
    import zipfile

    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    packages = ("dataset_builder/", "training/", "inference/", "evaluation/", "model_cards/", "recipes/")
    wanted = [f for f in tracked if f.startswith(packages) or f in ("pyproject.toml", "README.md") or "/" not in f]
    source = tmp_path / "src"
    for name in wanted:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"recipes/__init__.py", "recipes/llava-1.5-7b/base.yaml", "recipes/tiny/base.yaml"} <= names
    assert {"mirror_cli.py", "mirror_quickstart.py"} <= names
    data = [f for f in wanted if f.startswith(packages) and f.endswith((".yaml", ".jsonl", ".jinja", ".json"))]
    assert data and [f for f in data if f not in names] == []
