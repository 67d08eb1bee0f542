"""`mirror train` end to end on tiny random models: what trains, what the loss sees, what is saved, resuming."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_train_config import tiny_argv

from training.train import (
    TINY_RECIPE,
    build_trainer,
    main,
    parse_args,
    save_model_folder,
)

LLAVA_EOS = (Path(__file__).parents[1] / "training" / "chat_templates" / "llava_eos.jinja").read_text()


def tiny_args(model_dir, dataset_dir, output_dir, *extra: str):
    """The tiny recipe with the given model, data and output folder, plus CLI overrides."""
    return parse_args(tiny_argv(model_dir, dataset_dir, output_dir, *extra))


def train_with_snapshots(trainer):
    """Train; return the parameters before and after, the names of the trainable ones, and the train output."""
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainable = {name for name, param in trainer.model.named_parameters() if param.requires_grad}
    result = trainer.train()
    after = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    return before, after, trainable, result


class StepCounter:
    """A TrainerCallback counting the optimizer steps run in this process."""

    def __init__(self):
        from transformers import TrainerCallback

        counter = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                counter.steps.append(state.global_step)

        self.steps: list[int] = []
        self.callback = _Callback()


@pytest.fixture(scope="module")
def lora_run(tiny_llava_dir, sample_dataset_dir, tmp_path_factory):
    """The tiny LoRA recipe trained 3 steps (checkpoints at 2 and 3), with parameters before and after."""
    output_dir = tmp_path_factory.mktemp("lora-run") / "model"
    script_args, training_args, model_args = tiny_args(
        tiny_llava_dir, sample_dataset_dir, output_dir, "--max_steps", "3", "--save_steps", "2"
    )
    trainer = build_trainer(script_args, training_args, model_args)
    before, after, trainable, result = train_with_snapshots(trainer)
    folder = save_model_folder(trainer, script_args, training_args, model_args, metrics=result.metrics)
    return {
        "trainer": trainer,
        "script_args": script_args,
        "training_args": training_args,
        "model_args": model_args,
        "before": before,
        "after": after,
        "trainable": trainable,
        "folder": folder,
        "metrics": result.metrics,
    }


def test_lora_recipe_changes_every_trainable_parameter_and_no_frozen_one(lora_run):
    before, after, trainable = lora_run["before"], lora_run["after"], lora_run["trainable"]
    assert trainable, "nothing to train"
    unchanged = [name for name in trainable if torch.equal(before[name], after[name])]
    assert unchanged == [], f"trainable parameters that did not move: {unchanged}"
    changed_frozen = [name for name in before if name not in trainable and not torch.equal(before[name], after[name])]
    assert changed_frozen == [], f"frozen parameters that moved: {changed_frozen}"
    # What is trainable: LoRA factors inside the language model, and the projector's trainable copy. Nothing else.
    for name in trainable:
        in_lm_lora = ".language_model." in name and ".lora_" in name
        in_projector = ".multi_modal_projector.modules_to_save." in name
        assert in_lm_lora or in_projector, name
    assert any(".multi_modal_projector.modules_to_save." in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)


def test_lora_targets_only_language_model_linear_layers(lora_run):
    from peft.tuners.lora import LoraLayer

    model = lora_run["trainer"].model
    adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    # 2 layers x (q, k, v, o, gate, up, down) in the tiny Llama; none in the CLIP tower, the projector or lm_head
    assert len(adapted) == 2 * 7
    assert all(".language_model.layers." in name for name in adapted)
    assert not any(part in name for name in adapted for part in ("vision_tower", "multi_modal_projector", "lm_head"))


def test_projector_trains_at_its_own_learning_rate(lora_run):
    trainer, script_args, training_args = lora_run["trainer"], lora_run["script_args"], lora_run["training_args"]
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    projector_ids = {
        id(param)
        for name, param in trainer.model.named_parameters()
        if ".multi_modal_projector.modules_to_save." in name
    }
    projector_groups = [g for name, g in groups.items() if name.startswith("projector")]
    model_groups = [g for name, g in groups.items() if name.startswith("model")]
    assert projector_groups and model_groups
    assert {id(p) for g in projector_groups for p in g["params"]} == projector_ids
    assert all(g["initial_lr"] == pytest.approx(script_args.projector_lr) for g in projector_groups)
    assert all(g["initial_lr"] == pytest.approx(training_args.learning_rate) for g in model_groups)
    assert script_args.projector_lr != training_args.learning_rate


def test_train_loss_is_logged(lora_run):
    history = lora_run["trainer"].state.log_history
    step_losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(step_losses) == 3  # logging_steps: 1
    assert all(math.isfinite(loss) for loss in step_losses)
    assert "train_loss" in history[-1] and math.isfinite(history[-1]["train_loss"])
    assert lora_run["metrics"]["train_loss"] == pytest.approx(history[-1]["train_loss"])
    assert lora_run["trainer"].state.global_step == 3


def test_collated_labels_are_the_reply_and_eos_only(lora_run, sample_dataset_dir):
    """Assert on the batch TRL's own collator builds: image, prompt and padding tokens are all masked."""
    import datasets

    trainer = lora_run["trainer"]
    processor = trainer.processing_class
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    sft = datasets.load_dataset(str(sample_dataset_dir), "sft", split="train")
    ec_rows = sft.filter(lambda v: v == "ec_planning", input_columns="variant")
    picks = [ec_rows[ec_rows["task"].index(task)] for task in ("response", "emotion_caption")]
    picks.append(trainer.train_dataset[0])  # a `base` row as the trainer sees it
    examples = [{"messages": row["messages"], "images": row["images"]} for row in picks]
    batch = trainer.data_collator([dict(e) for e in examples])

    assert (batch["input_ids"] == image_id).sum() == 4 * len(examples)  # 28 px / 14 px patches = 4 image tokens
    for row, input_ids, labels, mask in zip(
        examples, batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
    ):
        reply = "".join(block["text"] for block in row["messages"][-1]["content"] if block["type"] == "text")
        kept = (labels != -100).nonzero().flatten()
        assert len(kept) > 0
        # one contiguous span, identical to the input ids there, ending on EOS, decoding to the reply + EOS
        assert torch.equal(kept, torch.arange(kept[0], kept[-1] + 1))
        assert torch.equal(labels[kept], input_ids[kept])
        assert labels[kept[-1]] == tokenizer.eos_token_id
        assert tokenizer.decode(labels[kept]) == reply + tokenizer.eos_token
        # everything before the reply is the prompt: image tokens, the user turn and "ASSISTANT:" are all masked
        prompt = tokenizer.decode(input_ids[: kept[0]])
        assert prompt.removeprefix(tokenizer.bos_token).startswith("USER: <image>")
        assert prompt.rstrip().endswith("ASSISTANT:")
        assert image_id not in labels
        assert (labels[mask == 0] == -100).all()


def test_model_folder_is_hub_ready(lora_run, tiny_llava_dir):
    from huggingface_hub import metadata_load

    folder = lora_run["folder"]
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "generation_config.json"} <= files
    assert {"tokenizer.json", "processor_config.json", "chat_template.jinja", "mirror_training.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))], files  # safetensors only
    assert (folder / "chat_template.jinja").read_text() == LLAVA_EOS
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["do_sample"] is True
    assert generation["temperature"] == 0.7 and generation["top_p"] == 0.9 and generation["max_new_tokens"] == 128
    assert generation["eos_token_id"] == 2  # </s> of the tiny tokenizer: generation stops where training taught it
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_llava_dir)
    assert adapter_config["modules_to_save"] == ["model.multi_modal_projector"]
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16

    metadata = metadata_load(folder / "README.md")
    assert metadata["library_name"] == "peft"
    assert metadata["pipeline_tag"] == "image-text-to-text"
    assert metadata["license"] == "apache-2.0"
    assert "mirror" in metadata["tags"] and "variant-base" in metadata["tags"]
    card = (folder / "README.md").read_text()
    assert "not a medical device" in card and "Crisis safety" in card
    assert "| `projector_lr` | `0.0001` |" in card and "| `lora_r` | `8` |" in card
    record = json.loads((folder / "mirror_training.json").read_text())
    assert record["mirror_args"]["variant"] == "base" and record["mirror_args"]["recipe"] == str(TINY_RECIPE)


def test_adapter_reloads_and_merges_to_identical_logits(lora_run, tiny_llava_dir, tmp_path):
    from huggingface_hub import metadata_load
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.merge import merge_adapter

    adapter_dir = lora_run["folder"]
    merged_dir = merge_adapter(adapter_dir, tmp_path / "merged")
    processor = AutoProcessor.from_pretrained(merged_dir)
    batch = lora_run["trainer"].data_collator([dict(lora_run["trainer"].train_dataset[i]) for i in range(2)])
    batch.pop("labels")

    with torch.no_grad():
        base_logits = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir).eval()(**batch).logits
        adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_llava_dir), adapter_dir)
        adapter_logits = adapted.eval()(**batch).logits
        merged_logits = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()(**batch).logits

    assert not torch.allclose(adapter_logits, base_logits, atol=1e-4), "the adapter changes nothing"
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    assert (merged_dir / "model.safetensors").is_file() and not list(merged_dir.glob("*.bin"))
    assert processor.chat_template == LLAVA_EOS
    assert json.loads((merged_dir / "generation_config.json").read_text())["temperature"] == 0.7
    metadata = metadata_load(merged_dir / "README.md")
    assert metadata["library_name"] == "transformers" and metadata["base_model_relation"] == "finetune"


def test_model_folder_holds_no_pickle_and_no_checkpoint(lora_run):
    """Issue 7: checkpoints (torch pickles) live beside the model folder, never inside what gets published."""
    folder = lora_run["folder"]
    published = [p.relative_to(folder).as_posix() for p in folder.rglob("*")]
    assert not [p for p in published if p.endswith((".bin", ".pt", ".pth", ".pkl"))], published
    assert not [p for p in published if "checkpoint-" in p], published
    checkpoints = Path(f"{folder}-checkpoints")
    assert lora_run["trainer"].args.output_dir == str(checkpoints)
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (checkpoints / "checkpoint-2" / "optimizer.pt").is_file()  # resumable: optimizer state kept


def test_resume_from_last_checkpoint_continues_the_step_count(lora_run, tiny_llava_dir, sample_dataset_dir, tmp_path):
    output_dir = tmp_path / "resumed"
    checkpoints = tmp_path / "resumed-checkpoints"
    shutil.copytree(lora_run["trainer"].args.output_dir + "/checkpoint-2", checkpoints / "checkpoint-2")
    script_args, training_args, model_args = tiny_args(
        tiny_llava_dir, sample_dataset_dir, output_dir, "--max_steps", "4", "--resume_from_checkpoint", "last"
    )
    counter = StepCounter()
    main(script_args, training_args, model_args, callbacks=[counter.callback])
    assert counter.steps == [3, 4]  # steps 1-2 came from the checkpoint, only 3 and 4 ran here
    state = json.loads((checkpoints / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert (output_dir / "adapter_model.safetensors").is_file()
    published = [p.name for p in output_dir.rglob("*")]
    assert not [p for p in published if p.endswith((".bin", ".pt", ".pth", ".pkl")) or "checkpoint-" in p]


def test_text_variant_trains_a_causal_lm(tiny_lm_dir, sample_dataset_dir, tmp_path):
    from huggingface_hub import metadata_load

    script_args, training_args, model_args = tiny_args(
        tiny_lm_dir, sample_dataset_dir, tmp_path / "text", "--variant", "text", "--max_steps", "3",
        "--save_strategy", "no",
    )  # fmt: skip
    trainer = build_trainer(script_args, training_args, model_args)
    assert not isinstance(trainer.processing_class, __import__("transformers").ProcessorMixin)
    assert "images" not in trainer.train_dataset.column_names
    tokenizer = trainer.processing_class
    row = trainer.train_dataset[0]
    kept = [token for token in row["labels"] if token != -100]
    assert tokenizer.decode(kept) == row["messages"][-1]["content"] + tokenizer.eos_token
    before, after, trainable, result = train_with_snapshots(trainer)
    assert trainable and all(not torch.equal(before[n], after[n]) for n in trainable)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)
    assert math.isfinite(result.metrics["train_loss"])
    folder = save_model_folder(trainer, script_args, training_args, model_args, metrics=result.metrics)
    metadata = metadata_load(folder / "README.md")
    assert metadata["pipeline_tag"] == "text-generation" and "text-only" in metadata["tags"]
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def test_full_finetuning_freezes_the_vision_tower(tiny_llava_dir, sample_dataset_dir, tmp_path):
    script_args, training_args, model_args = tiny_args(
        tiny_llava_dir, sample_dataset_dir, tmp_path / "full", "--use_peft", "false", "--max_steps", "2",
        "--save_strategy", "no",
    )  # fmt: skip
    trainer = build_trainer(script_args, training_args, model_args)
    before, after, trainable, _ = train_with_snapshots(trainer)
    assert not any("vision_tower" in name for name in trainable)
    assert any("multi_modal_projector" in name for name in trainable)
    assert any("language_model.layers" in name for name in trainable) and "lm_head.weight" in trainable
    assert all(torch.equal(before[n], after[n]) for n in before if "vision_tower" in n)
    assert all(not torch.equal(before[n], after[n]) for n in trainable if "multi_modal_projector" in n)
    projector_lrs = {g["initial_lr"] for g in trainer.optimizer.param_groups if g["name"].startswith("projector")}
    assert projector_lrs == {script_args.projector_lr}
    folder = save_model_folder(trainer, script_args, training_args, model_args)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert not (folder / "adapter_config.json").exists()


def test_train_tiny_model_returns_a_folder_from_pretrained_loads(sample_dataset_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.train import train_tiny_model

    folder = train_tiny_model(sample_dataset_dir, tmp_path / "quickstart", max_steps=2)
    assert folder == tmp_path / "quickstart" / "model"
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.chat_template == LLAVA_EOS
    assert (tmp_path / "quickstart" / "adapter" / "adapter_model.safetensors").is_file()
