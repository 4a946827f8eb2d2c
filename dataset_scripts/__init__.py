"""DataCompDR-style reinforced image-text datasets with 🤗 `datasets`.

Modules (imported on demand, so `import dataset_scripts` stays cheap):

    augmentation     record/replay RandomResizedCrop + RandAugment; DataCompDR's compressed `paug.json` form
    dataset_specs    the one way to open a dataset spec (data file, glob, folder, Hub id); `IMAGE_EXTENSIONS`
    dr_format        Parquet + card format, `DataCompDRBuilder` (writing side), `load_reinforcement_metadata`
    teachers         CLIP teacher specs (`open_clip:ARCH:PRETRAINED`, `hf:PATH_OR_ID`)
    captioners       synthetic-caption generators (`open_clip:COCA:TAG`, `hf:PATH_OR_ID`, `column:NAME`, `none`)
    reinforce        `python -m dataset_scripts.reinforce`: the resumable, multi-GPU reinforcement pipeline
    reinforce_config `ReinforceConfig`: the settings of one reinforcement run (what the command line parses into)
    sample_stream    reinforce's source side: source -> units -> decoded, augmented samples (bad rows skipped)
    reinforce_compute reinforce's model side: captioner and teacher ensemble on the stream's batches
    run_state        resume state, report, part writing and process coordination (reinforce, convert_official)
    ownership        who owns an output folder; duplicated uids
    official         Apple's WebDataset shards: reader and writer
    convert_official `python -m dataset_scripts.convert_official`: official shards → our Parquet format
    training_view    `ReinforcedTrainingView`: per-sample replay + caption draw + float16 teacher targets
    hub_push         the push of a reinforced dataset, through `modeling_mobileclip.model_folder.push_folder`
    pixels           `(pixels - mean) / std` with the model processor's mean/std
"""
