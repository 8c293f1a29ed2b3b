"""Chronos tokenizer and encoder equal the chronos-forecasting package's (ChronosPipeline.embed) on its own checkpoint."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import fixture_path
from imuspec import CheckpointError
from imuspec.encoders.chronos import ChronosEncoder

chronos = pytest.importorskip("chronos", reason="chronos-forecasting (test extra) is not installed")


def series_cases():
    g = torch.Generator().manual_seed(0)
    watch = np.load(fixture_path("watch_imu", "watch_imu.npz"))
    a = watch["offsets"][0]
    real = torch.from_numpy(watch["samples"][a:a + 300].T.astype(np.float64))  # 6 real channels, 6 s at 50 Hz
    spiky = torch.randn(2, 64, generator=g)
    spiky[:, 10] = 400.0  # beyond ±15 scales: clamped into the edge bins
    return {
        "real watch IMU": real,
        "long (cut to 512)": torch.randn(3, 700, generator=g) * 5 + 2,
        "one channel": torch.randn(17, generator=g),
        "zeros (scale 1)": torch.zeros(2, 30),
        "constant negative": torch.full((1, 40), -3.5),
        "spiky": spiky,
    }


@pytest.fixture(scope="module")
def pair():
    folder = fixture_path("chronos_dummy", "config.json").parent
    pipe = chronos.ChronosPipeline.from_pretrained(str(folder), dtype=torch.float32)
    return ChronosEncoder.from_pretrained(folder), pipe


@pytest.mark.parametrize("name", list(series_cases()))
def test_ids_and_embeddings_equal_chronos_forecasting(pair, name):
    ours, pipe = pair
    x = series_cases()[name]
    ids, scale = ours.tokenize(x)
    ref_ids, _, ref_scale = pipe.tokenizer.context_input_transform(x if x.ndim == 2 else x[None])
    assert torch.equal(ids, ref_ids)
    assert torch.equal(scale, ref_scale)
    assert ids.shape[1] == min(x.shape[-1], 512) + 1 and (ids[:, -1] == 1).all()
    with torch.no_grad():
        emb = ours(x)
    ref_emb, _ = pipe.embed(x)
    assert emb.shape == ref_emb.shape
    assert torch.allclose(emb, ref_emb, atol=1e-6, rtol=1e-5)


def test_bad_series_are_refused(pair):
    ours, _ = pair
    x = torch.randn(2, 20)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ours.tokenize(x)
    with pytest.raises(ValueError, match=r"L > 0, got \(2, 0\)"):
        ours.tokenize(torch.zeros(2, 0))
    with pytest.raises(ValueError, match=r"\[C, L\]"):
        ours.tokenize(torch.zeros(2, 3, 4))


def _folder(tmp_path, config=None, drop=None):
    tmp_path.mkdir()
    src = fixture_path("chronos_dummy", "config.json").parent
    d = json.loads((src / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config(d) if config else d))
    sd = load_file(str(src / "model.safetensors"))
    for k in drop or ():
        sd.pop(k)
    save_file(sd, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_bad_checkpoints_are_named(tmp_path):
    def no_chronos(d):
        return {k: v for k, v in d.items() if k != "chronos_config"}

    def other_tokenizer(d):
        return {**d, "chronos_config": {**d["chronos_config"], "tokenizer_class": "MeanScaleFancyBins"}}

    def no_field(d):
        return {**d, "chronos_config": {k: v for k, v in d["chronos_config"].items() if k != "n_tokens"}}

    for i, (edit, msg) in enumerate([(no_chronos, "no 'chronos_config'"), (other_tokenizer, "MeanScaleFancyBins"),
                                     (no_field, "no field 'n_tokens'")]):
        with pytest.raises(CheckpointError, match=msg):
            ChronosEncoder.from_pretrained(_folder(tmp_path / str(i), edit))
    key = "encoder.block.0.layer.1.DenseReluDense.wi.weight"
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        ChronosEncoder.from_pretrained(_folder(tmp_path / "k", drop=[key]))
    # the token embedding may be stored under either tied name
    enc = ChronosEncoder.from_pretrained(_folder(tmp_path / "e", drop=["shared.weight"]))
    assert torch.equal(enc.t5.shared.weight, load_file(str(fixture_path("chronos_dummy", "model.safetensors")))["shared.weight"])
