"""The latency command runs ours and the peer on the same function, and reports medians of the times it measured (no
speed is asserted: speed lives in benchmarks/; a scripted clock checks the arithmetic)."""

import itertools
import json
import statistics

import pytest

from evaluation import latency
from torch_threads import single_torch_thread  # noqa: F401 (fixture)


# Seconds the scripted clock reports for each timed call, in turn: medians 0.020 s (ours) and 0.050 s (peer).
OURS_SECONDS, PEER_SECONDS = [0.030, 0.010, 0.020], [0.050, 0.090, 0.040]


def test_tiny_variant_against_timm_image_tower_and_mct_text_peer(tmp_path, capsys, monkeypatch):
    from modeling_mobileclip import MobileCLIPModel

    ours_clock, peer_clock = itertools.cycle(OURS_SECONDS), itertools.cycle(PEER_SECONDS)

    def scripted_seconds(device, function, *arguments):  # runs the call, reports the scripted time
        function(*arguments)
        return next(ours_clock if isinstance(getattr(function, "__self__", None), MobileCLIPModel) else peer_clock)

    monkeypatch.setattr(latency, "seconds_per_call", scripted_seconds)
    out = tmp_path / "latency.json"
    rows = latency.main(["--variant", "mobileclip-tiny", "--batch-sizes", "1,2", "--runs", "3", "--warmup", "0",
                         "--output", str(out)])
    assert [(r["encoder"], r["batch_size"]) for r in rows] == [("image", 1), ("text", 1), ("image", 2), ("text", 2)]
    image_rows = [r for r in rows if r["encoder"] == "image"]
    # Our image tower received the timm peer's weights: the same network, so identical outputs.
    assert all(r["max_abs_diff"] == 0.0 for r in image_rows)
    ours_s, peer_s = statistics.median(OURS_SECONDS), statistics.median(PEER_SECONDS)
    for r in rows:  # every row reports the medians of its own scripted runs, and what follows from them
        assert r["ours_ms"] == pytest.approx(1000 * ours_s) and r["peer_ms"] == pytest.approx(1000 * peer_s)
        assert r["peer_over_ours"] == pytest.approx(peer_s / ours_s) == pytest.approx(2.5)
        assert r["ours_items_per_s"] == pytest.approx(r["batch_size"] / ours_s)
        assert r["peer_items_per_s"] == pytest.approx(r["batch_size"] / peer_s)
    # The MCt text tower's peer is transformers' Sam3LiteText of the same shapes, with its own random weights:
    # timed, but its outputs are not comparable.
    text_rows = [r for r in rows if r["encoder"] == "text"]
    assert all(r["max_abs_diff"] is None for r in text_rows)
    printed = capsys.readouterr().out
    assert "peer: timm fastvit_mci0 + transformers Sam3LiteText (MCt)" in printed and "peer/ours" in printed
    assert json.loads(out.read_text())["rows"] == rows


def test_published_variant_against_open_clip_with_copied_weights():
    rows = latency.main(["--variant", "MobileCLIP2_S0", "--batch-sizes", "1", "--runs", "1", "--warmup", "0", "--reparameterize"])
    by_encoder = {r["encoder"]: r for r in rows}
    # open_clip's MobileCLIP2-S0 with its weights converted into ours: same function after fusing both.
    assert by_encoder["image"]["max_abs_diff"] < 1e-4 and by_encoder["text"]["max_abs_diff"] < 1e-4


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="Unknown MobileCLIP variant 'mobileclip-s9'"):
        latency.main(["--variant", "mobileclip-s9"])
