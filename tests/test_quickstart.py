"""`mirror quickstart` end to end in a fresh process: dataset folder, tiny trained model, one therapist reply, the
evaluation report and plots, validated cards, and the push commands; then its outputs load in another process."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_offline_and_its_outputs_load(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    mirror = shutil.which("mirror", path=str(Path(sys.executable).parent)) or "mirror"
    started = time.monotonic()
    proc = subprocess.run(
        [mirror, "quickstart", "--output", "qs", "--max-steps", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert elapsed < 300, f"quickstart took {elapsed:.0f}s; the target is under 5 minutes on 2 CPU cores"
    out, err = proc.stdout, proc.stderr
    for stage in range(1, 7):
        assert f"[{stage}/6]" in out
    assert "not a human" in out and "Therapist (" in out and "Building Mirror configs" in err  # progress bar
    assert not re.search(r"(Deprecat|FutureWarning|UserWarning)", out + err), (out + err)[-3000:]
    assert "\ufffd" not in out  # the random model's bytes are not printed raw
    assert "cards valid" in out
    qs = tmp_path / "qs"
    dataset, model = qs / "mirror", qs / "mirror-tiny-therapist"
    dry_run = f"mirror push --dataset_dir {dataset} --model_dirs {model} --dry_run"
    assert dry_run in out and f"mirror push --dataset_dir {dataset} --model_dirs {model}\n" in out
    report = qs / "evaluation" / "report" / "report.json"
    assert f"Evaluation report  {report}" in out and "Plot" in out
    # Output lines of the summary are aligned: every path starts in the same column.
    summary = out.split("Done. Outputs:\n", 1)[1].split("Publish", 1)[0].splitlines()
    assert len({line.index("/") for line in summary}) == 1

    check = f"""
import json
from datasets import load_dataset
from transformers import AutoModelForImageTextToText, AutoProcessor
sizes = {{c: load_dataset("mirror", c, split="test" if c == "profiles" else "train").num_rows
         for c in ("sessions", "sft", "sft_planning", "profiles", "filtered")}}
planning = set(load_dataset("mirror", "sft_planning", split="train")["variant"])
model = AutoModelForImageTextToText.from_pretrained({str(model)!r})
processor = AutoProcessor.from_pretrained({str(model)!r})
print(json.dumps({{"sizes": sizes, "planning": sorted(planning), "model": type(model).__name__,
                  "template": "eos_token" in processor.chat_template}}))
"""
    proc = subprocess.run([sys.executable, "-c", check], cwd=qs, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    profiles = sum(1 for line in (ROOT / "dataset_builder/sample/profiles.jsonl").read_text().splitlines() if line)
    assert loaded["sizes"]["profiles"] == profiles and loaded["sizes"]["sessions"] > 0
    assert 0 < loaded["sizes"]["sft_planning"] < loaded["sizes"]["sft"] and loaded["planning"] == ["planning"]
    assert loaded["model"] == "LlavaForConditionalGeneration" and loaded["template"]

    files = {p.name for p in model.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    results = json.loads(report.read_text())
    assert results["therapists"] and list((qs / "evaluation" / "report").glob("*.png"))
    card = (model / "README.md").read_text()
    assert "model-index:" in card and "scores noise" in card  # the results, with the quickstart's caveat
    assert str(tmp_path) not in card and str(tmp_path) not in (dataset / "README.md").read_text()

    # The printed dry run works as printed (offline here, so repo ids show <user>) and lists only what belongs.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "push_to_hub.py"), *dry_run.split()[2:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "dataset <user>/mirror (private)" in proc.stdout
        and "model <user>/mirror-tiny-therapist (private)" in proc.stdout
    )
    assert "upload    model.safetensors" in proc.stdout and "upload    data/sft/planning-" in proc.stdout

    # The README's Python snippets run as written, from the folder the README says (`mirror_quickstart` is the
    # default output; this run used `qs`).
    (tmp_path / "mirror_quickstart").symlink_to(qs)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    snippets = [(tmp_path / "mirror_quickstart", blocks[0]), (tmp_path, blocks[1])]
    assert "load_dataset(\"mirror\")" in blocks[0] and "MirrorTherapist.from_pretrained" in blocks[1]
    for cwd, code in snippets:
        proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    # The closing "Next" hints work from any folder: the chat line as printed, with a piped client turn.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    chat = next(line.strip() for line in out.splitlines() if line.strip().startswith("mirror chat "))
    proc = subprocess.run([mirror, *chat.split()[1:]], cwd=elsewhere, env=env, input="[looks away] fine.\n/quit\n",
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "Therapist:" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    train = next(line.strip() for line in out.splitlines() if line.strip().startswith("mirror train "))
    assert "--config llava-1.5-7b/planning" in train  # a bundled recipe name, resolved from any folder:
    from recipes import resolve_recipe

    assert resolve_recipe("llava-1.5-7b/planning").is_file()


def test_skip_training_and_output_folder_safety(tmp_path, capsys):
    from mirror_quickstart import QuickstartArguments, main

    assert main(QuickstartArguments(output=str(tmp_path / "qs"), skip_training=True)) == 0
    out = capsys.readouterr().out
    assert "[1/2]" in out and "[2/2]" in out and "[3/" not in out and "--model_dirs" not in out
    assert (tmp_path / "qs" / "mirror" / "README.md").is_file()
    assert main(QuickstartArguments(output=str(tmp_path / "qs"), skip_training=True)) == 0  # a re-run is fine
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not made by `mirror quickstart`"):
        main(QuickstartArguments(output=str(foreign), skip_training=True))
    assert (foreign / "thesis.tex").read_text() == "precious" and len(list(foreign.iterdir())) == 1
