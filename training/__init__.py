"""Fine-tuning MIRROR therapist models with TRL's `SFTTrainer` (LoRA, QLoRA, full), configured by YAML recipes.

- `training.train`: `mirror train` (`make_parser`, `parse_args`, `main`, `build_trainer`, `train_tiny`)
- `training.merge`: `mirror merge` (`make_parser`, `main`, `merge_adapter`)
- `training.data`: loading and checking the `sft` config of a Mirror dataset
- `training.modeling`: checks, chat template, LoRA targets, the projector's param group (`MirrorSFTTrainer`)
- `training.tiny`: tiny random models built from configs, offline

See training/README.md for the recipes and the launch commands.
"""
