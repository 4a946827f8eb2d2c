"""Writes the CLIP BPE vocabulary shipped in `modeling_mobileclip/tokenizer/` (`vocab.json`, `merges.txt`).

The source is `bpe_simple_vocab_16e6.txt.gz`, the BPE merge list that OpenAI CLIP published and open_clip ships inside
its wheel. The ids follow open_clip's `SimpleTokenizer` exactly: the 256 byte symbols, the same symbols with the
end-of-word marker `</w>`, the first 48,894 merges, then `<start_of_text>` (49406) and `<end_of_text>` (49407).

This is a command-line tool run once by maintainers; the model and processor files never import it, and it needs only
the standard library (open_clip, if installed, is used only to locate the `.gz` file):

    python -m modeling_mobileclip.convert_vocab                      # finds the file in the installed open_clip
    python -m modeling_mobileclip.convert_vocab --bpe path/to/bpe_simple_vocab_16e6.txt.gz --out some/dir
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path


BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the file
START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
VOCAB_SIZE = 49408
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "tokenizer"


def byte_symbols() -> list[str]:
    """The 256 printable characters that stand for the bytes 0..255, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the other bytes (controls, space, ...) are moved to
    code points 256 and up so that no symbol is whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in set(printable)]
    return [chr(byte) for byte in printable] + [chr(256 + offset) for offset in range(len(shifted))]


def find_bpe_file() -> Path:
    """Locates the BPE file inside the installed open_clip package without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"open_clip is not installed, so {BPE_FILE_NAME} cannot be located; pass --bpe PATH "
            "(pip install open-clip-torch ships it)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{BPE_FILE_NAME} not found in the installed open_clip package at {path}.")
    return path


def read_merges(bpe_path: Path) -> list[tuple[str, str]]:
    """Reads the first `NUM_MERGES` merges (line 1 is a version header) and checks their shape."""
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    if not lines[0].startswith(f"\"{BPE_FILE_NAME[:-3]}#version"):
        raise ValueError(f"{bpe_path}: expected a '{BPE_FILE_NAME[:-3]}#version' header, got {lines[0][:60]!r}.")
    merges = []
    for line_number, line in enumerate(lines[1 : NUM_MERGES + 1], start=2):
        pair = line.split()
        if len(pair) != 2:
            raise ValueError(f"{bpe_path}, line {line_number}: expected 'left right', got {line!r}.")
        merges.append((pair[0], pair[1]))
    if len(merges) != NUM_MERGES:
        raise ValueError(f"{bpe_path}: expected at least {NUM_MERGES} merges, got {len(merges)}.")
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id, in open_clip's order; fails if two entries collide (ids would then be skipped)."""
    symbols = byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(pair) for pair in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or len(tokens) != VOCAB_SIZE:
        raise ValueError(f"Expected {VOCAB_SIZE} distinct tokens, got {len(vocab)} distinct of {len(tokens)}.")
    return vocab


def write_vocab_files(bpe_path: Path, output_dir: Path) -> tuple[Path, Path]:
    """Writes `vocab.json` and `merges.txt` (with the usual `#version: 0.2` header) into `output_dir`."""
    merges = read_merges(bpe_path)
    vocab = build_vocab(merges)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = output_dir / "vocab.json", output_dir / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_path, merges_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", type=Path, default=None, help=f"path to {BPE_FILE_NAME} (default: open_clip's copy)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT_DIR, help="output folder")
    args = parser.parse_args(argv)
    for path in write_vocab_files(args.bpe or find_bpe_file(), args.out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    from modeling_mobileclip.cli import run_main

    run_main(main)
