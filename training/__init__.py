"""Fine-tuning MIRROR therapist models with TRL's `SFTTrainer` (LoRA, QLoRA, full), configured by YAML recipes.

- `training.train`: `mirror train` (`ARGUMENTS`, `main`, `parse_args`, `build_trainer`, `train_tiny_model`)
- `training.merge`: `mirror merge` (`ARGUMENTS`, `main`, `merge_adapter`)
- `training.data`: loading and checking the `sft` config of a Mirror dataset
- `training.modeling`: checks, chat template, LoRA targets, the projector's param group (`MirrorSFTTrainer`)
- `training.tiny`: tiny random models built from configs, offline

See training/README.md for the recipes and the launch commands.
"""
