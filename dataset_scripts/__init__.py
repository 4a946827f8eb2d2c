"""DataCompDR-style reinforced image-text datasets with 🤗 `datasets`.

Modules (imported on demand, so `import dataset_scripts` stays cheap):

    augmentation     record/replay RandomResizedCrop + RandAugment; DataCompDR's compressed `paug.json` form
    dr_format        Parquet + card format, `DataCompDRBuilder` (writing side), `load_reinforcement_metadata`
    teachers         CLIP teacher specs (`open_clip:ARCH:PRETRAINED`, `hf:PATH_OR_ID`)
    captioners       synthetic-caption generators (`open_clip:COCA:TAG`, `hf:PATH_OR_ID`, `column:NAME`, `none`)
    reinforce        `python -m dataset_scripts.reinforce`: the resumable, multi-GPU reinforcement pipeline
    official         Apple's WebDataset shards: reader and writer
    convert_official `python -m dataset_scripts.convert_official`: official shards → our Parquet format
    training_view    `ReinforcedTrainingView`: per-sample replay + caption draw + float16 teacher targets
"""
