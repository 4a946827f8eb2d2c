"""The latency command runs ours and the peer on the same function (no timing is asserted: speed lives in benchmarks)."""

import json

import pytest

from evaluation import latency
from test_eval_helpers import single_torch_thread  # noqa: F401 (fixture)


def test_tiny_variant_against_timm_image_tower_and_mct_text_peer(tmp_path, capsys):
    out = tmp_path / "latency.json"
    rows = latency.main(["--variant", "mobileclip-tiny", "--batch-sizes", "1,2", "--runs", "2", "--warmup", "0",
                         "--output", str(out)])
    assert [(r["encoder"], r["batch_size"]) for r in rows] == [("image", 1), ("text", 1), ("image", 2), ("text", 2)]
    image_rows = [r for r in rows if r["encoder"] == "image"]
    # Our image tower received the timm peer's weights: the same network, so identical outputs.
    assert all(r["max_abs_diff"] == 0.0 and r["peer_ms"] > 0 and r["peer_over_ours"] > 0 for r in image_rows)
    # The MCt text tower's peer is transformers' Sam3LiteText of the same shapes, with its own random weights:
    # timed, but its outputs are not comparable.
    text_rows = [r for r in rows if r["encoder"] == "text"]
    assert all(r["peer_ms"] > 0 and r["max_abs_diff"] is None for r in text_rows)
    printed = capsys.readouterr().out
    assert "peer: timm fastvit_mci0 + transformers Sam3LiteText (MCt)" in printed and "peer/ours" in printed
    assert json.loads(out.read_text())["rows"] == rows


def test_published_variant_against_open_clip_with_copied_weights():
    rows = latency.main(["--variant", "MobileCLIP2_S0", "--batch-sizes", "1", "--runs", "1", "--warmup", "0", "--reparameterize"])
    by_encoder = {r["encoder"]: r for r in rows}
    # open_clip's MobileCLIP2-S0 with its weights converted into ours: same function after fusing both.
    assert by_encoder["image"]["max_abs_diff"] < 1e-4 and by_encoder["text"]["max_abs_diff"] < 1e-4
    assert by_encoder["text"]["peer_ms"] > 0


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="Unknown MobileCLIP variant 'mobileclip-s9'"):
        latency.main(["--variant", "mobileclip-s9"])
