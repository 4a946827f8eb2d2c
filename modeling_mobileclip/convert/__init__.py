"""Convert official MobileCLIP checkpoints (Apple, open_clip, timm) into a Hugging Face folder.

`python -m modeling_mobileclip.convert --help` (the command line: `command_line.py`). One job per file:
`checkpoint.py` reads a source state dict, `key_maps.py` maps its keys onto ours and loads them strictly,
`official.py` knows the official repos and detects a checkpoint's source and variant, `conversion.py` runs it end to
end and writes the folder.
"""

from .checkpoint import SOURCES, CheckpointMismatchError, default_config, load_checkpoint
from .command_line import main
from .conversion import (
    PUSH_MESSAGE,
    Conversion,
    convert,
    convert_checkpoint,
    model_card_for,
    write_converted,
)
from .key_maps import (
    convert_apple_image,
    convert_apple_text,
    convert_open_clip_text,
    convert_state_dict,
    load_converted,
)
from .official import (
    EXPECTED_LAYOUTS,
    OFFICIAL_BY_REPO,
    OFFICIAL_CHECKPOINTS,
    OfficialCheckpoint,
    detect_source,
    detect_variant,
    find_official_checkpoints,
    resolve_checkpoint,
    variant_from_name,
)

__all__ = [
    "EXPECTED_LAYOUTS",
    "OFFICIAL_BY_REPO",
    "OFFICIAL_CHECKPOINTS",
    "PUSH_MESSAGE",
    "SOURCES",
    "CheckpointMismatchError",
    "Conversion",
    "OfficialCheckpoint",
    "convert",
    "convert_apple_image",
    "convert_apple_text",
    "convert_checkpoint",
    "convert_open_clip_text",
    "convert_state_dict",
    "default_config",
    "detect_source",
    "detect_variant",
    "find_official_checkpoints",
    "load_checkpoint",
    "load_converted",
    "main",
    "model_card_for",
    "resolve_checkpoint",
    "variant_from_name",
    "write_converted",
]
