"""`mirror quickstart` end to end in a fresh process: dataset folder, tiny trained model, one therapist reply."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_quickstart_runs_offline_and_its_outputs_load(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    mirror = shutil.which("mirror", path=str(Path(sys.executable).parent)) or "mirror"
    proc = subprocess.run([mirror, "quickstart", "--output", str(tmp_path / "qs"), "--max-steps", "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert stage in proc.stdout
    assert "load_dataset" in proc.stdout and "not a human" in proc.stdout and "Therapist (" in proc.stdout
    assert "Building Mirror configs" in proc.stderr  # the progress bar

    check = f"""
import json
from datasets import load_dataset
from transformers import AutoModelForImageTextToText, AutoProcessor
folder = {str(tmp_path / "qs" / "dataset")!r}
sizes = {{c: load_dataset(folder, c, split="test" if c == "profiles" else "train").num_rows
         for c in ("sessions", "sft", "profiles", "filtered")}}
model_dir = {str(tmp_path / "qs" / "training" / "model")!r}
model = AutoModelForImageTextToText.from_pretrained(model_dir)
processor = AutoProcessor.from_pretrained(model_dir)
print(json.dumps({{"sizes": sizes, "model": type(model).__name__, "template": "eos_token" in processor.chat_template}}))
"""
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    sample = Path(__file__).resolve().parent.parent / "dataset_builder" / "sample"
    n_sessions, n_profiles = (sum(1 for line in (sample / name).read_text().splitlines() if line.strip())
                              for name in ("sessions.jsonl", "profiles.jsonl"))
    assert out["sizes"]["sessions"] == n_sessions and out["sizes"]["profiles"] == n_profiles
    assert out["sizes"]["filtered"] == n_sessions + n_profiles
    assert out["sizes"]["sft"] > n_sessions * 4
    assert out["model"] == "LlavaForConditionalGeneration" and out["template"]
    files = {p.name for p in (tmp_path / "qs" / "training" / "model").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert "README.md" in files
