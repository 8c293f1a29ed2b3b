import numpy as np
import pytest
import torch

from conftest import fixture_path
from imuspec.checkpoint import CheckpointError
from imuspec.encoders.limu_bert import LimuBert, LimuBertConfig, interpolate_masked, mask_windows, span_mask
from imuspec.imu.preprocess import limu_bert_input
from imuspec.imu.readers import read_sensorcaps_jsonl
from limu_reference import limu_hidden, limu_reconstruct

DATASETS = ("hhar", "motion", "shoaib", "uci")


def _windows():
    recs = read_sensorcaps_jsonl(fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl"))
    x = np.stack([limu_bert_input(r) for r in recs])
    return np.unique(x, axis=0)  # the 40 entries share 4 IMU windows


def test_config_from_project_json():
    cfg = LimuBertConfig.from_json(fixture_path("limu_bert", "limu_bert.json"))
    assert cfg == LimuBertConfig(feature_num=6, hidden=72, hidden_ff=144, n_layers=4, n_heads=4, seq_len=120)
    with pytest.raises(CheckpointError, match="base_v9"):
        LimuBertConfig.from_json(fixture_path("limu_bert", "limu_bert.json"), "base_v9")


@pytest.mark.parametrize("name", DATASETS)
def test_pretrained_weights_load_and_match_reference(name):
    path = fixture_path("limu_bert", f"pretrain_base_{name}_20_120.pt")
    model = LimuBert.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == 62646
    sd = torch.load(path, map_location="cpu", weights_only=True)
    x = torch.tensor(_windows())
    pos = torch.tensor(np.stack([span_mask(120, np.random.default_rng(i)) for i in range(len(x))]))
    with torch.no_grad():
        h, rec = model(x), model.reconstruct(x, pos)
    assert h.shape == (len(x), 120, 72) and rec.shape == (len(x), 18, 6)
    torch.testing.assert_close(h, limu_hidden(sd, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rec, limu_reconstruct(sd, x, pos), atol=1e-5, rtol=1e-5)
    assert model.reconstruct(x).shape == (len(x), 120, 6)


def test_bad_state_dicts(tmp_path):
    sd = torch.load(fixture_path("limu_bert", "pretrain_base_uci_20_120.pt"), map_location="cpu", weights_only=True)
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "transformer.norm1.gamma"}, r"missing key 'transformer.norm1.gamma'"),
        "unexpected": ({**sd, "transformer.embed.nucleus_embed.weight": torch.zeros(2, 72)}, r"unexpected key 'transformer.embed.nucleus_embed"),
        "shape": ({**sd, "decoder.weight": torch.zeros(9, 72)}, r"'decoder.weight' has shape \(9, 72\), expected \(6, 72\)"),
    }
    for name, (bad, match) in cases.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=match):
            LimuBert.from_pretrained(tmp_path / f"{name}.pt")
    with pytest.raises(ValueError, match=r"expected \[B, <= 120, 6\]"):
        LimuBert()(torch.zeros(1, 120, 9))


def test_span_mask_follows_mask_json():
    pos = span_mask(120, np.random.default_rng(3))
    assert len(pos) == 18 and np.all(np.diff(pos) > 0) and pos.max() < 119  # 15 %, never the last step
    assert np.array_equal(pos, span_mask(120, np.random.default_rng(3)))
    x = np.ones((1, 120, 6), np.float32)
    assert mask_windows(x, pos[None])[0, pos].sum() == 0 and mask_windows(x, pos[None]).sum() == (120 - 18) * 6
    lin = np.tile(np.arange(120, dtype=np.float32)[None, :, None], (1, 1, 6))
    np.testing.assert_allclose(interpolate_masked(lin, pos[None])[0, :, 0], pos)  # a ramp is interpolated exactly


def _mse(x, draws=10):
    """Masked-span MSE of pretrained (shoaib), random-init and interpolation on windows x, ``draws`` masks each."""
    xs = np.repeat(x, draws, 0)
    pos = np.stack([span_mask(120, np.random.default_rng(i)) for i in range(len(xs))])
    target = xs[np.arange(len(xs))[:, None], pos]
    masked, p = torch.tensor(mask_windows(xs, pos)), torch.tensor(pos)
    torch.manual_seed(0)
    models = {"pretrained": LimuBert.from_pretrained(fixture_path("limu_bert", "pretrain_base_shoaib_20_120.pt")),
              "random": LimuBert().eval()}
    with torch.no_grad():
        out = {k: float(((m.reconstruct(masked, p).numpy() - target) ** 2).mean()) for k, m in models.items()}
    out["interpolation"] = float(((interpolate_masked(xs, pos) - target) ** 2).mean())
    return out


def test_pretrained_beats_random_and_interpolation_on_sensorcaps():
    """The 'must show' claim on the SensorCaps windows (the benchmark reports every dataset and weight file)."""
    m = _mse(_windows())
    assert m["pretrained"] < m["random"] and m["pretrained"] < m["interpolation"], m


@pytest.mark.xfail(strict=True, reason="measured: on the watch recordings (50 Hz -> 20 Hz) linear interpolation "
                   "reconstructs masked spans better than pretrained LIMU-BERT; see BENCHMARKS.md")
def test_pretrained_beats_interpolation_on_watch():
    from imuspec.imu.preprocess import limu_bert_windows
    from imuspec.imu.readers import read_watch_npz

    recs = read_watch_npz(fixture_path("watch_imu", "watch_imu.npz"))
    x = np.concatenate([limu_bert_windows(r)[0] for r in recs[::14]])
    m = _mse(x, draws=2)
    assert m["pretrained"] < m["interpolation"], m
