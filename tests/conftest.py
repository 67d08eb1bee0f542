"""Test setup: fully offline, tiny models built from configs, the sample dataset built once per run."""

import os
import tempfile

# Before any Hugging Face import: never reach the Hub, never touch the user's cache.
_HF_HOME = tempfile.mkdtemp(prefix="mirror-test-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs a real checkpoint or a GPU; skipped unless --run-slow")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow (needs a real checkpoint or a GPU)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def allow_loopback_http(monkeypatch):
    """HF_HUB_OFFLINE=1 (above) makes huggingface_hub refuse *every* request, loopback included. Lift it for one
    test in this process; use it only where every request goes to 127.0.0.1."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny random LLaVA folder (model, processor, EOS-terminated chat template)."""
    from training.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama causal LM folder with tokenizer and chat template."""
    from training.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def sample_dataset_dir(tmp_path_factory):
    """The bundled sample, faces rendered and built into a Hub-ready folder (all four configs)."""
    from dataset_builder.build import build_sample_dataset

    return build_sample_dataset(tmp_path_factory.mktemp("mirror-sample") / "dataset")
