import json

from conftest import fixture_path
from imuspec.cli import main


def test_inspect_imu_json(capsys):
    assert main(["inspect-imu", str(fixture_path("aedat4", "davis_sample_short.aedat4")), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"format", "n_samples", "rate_hz", "duration_s", "channels", "units"}
    assert out["format"] == "aedat4" and out["n_samples"] == 475 and out["units"] == {"accel": "g", "gyro": "deg/s"}
    assert abs(out["duration_s"] - 0.58866) < 1e-4 and out["channels"][3] == "gyro_x"


def test_inspect_imu_text_index_and_plot(tmp_path, capsys):
    png = tmp_path / "imu.png"
    path = fixture_path("llasa", "opensqa_untrained_10hz.jsonl")
    assert main(["inspect-imu", str(path), "--index", "2", "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "sensorcaps_jsonl, 60 samples at 10 Hz" in text and "label: decending stairs" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_inspect_imu_errors(tmp_path, capsys):
    assert main(["inspect-imu", str(fixture_path("basicmotions", "BasicMotions_TEST.ts"))]) == 2
    assert "holds 40 recordings; pick one with --index" in capsys.readouterr().err
    (tmp_path / "x.dat").write_bytes(b"\x00junk")
    assert main(["inspect-imu", str(tmp_path / "x.dat")]) == 2
    assert "known formats" in capsys.readouterr().err
