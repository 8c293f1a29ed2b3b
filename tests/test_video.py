"""Video decoding: uniform 8-frame sampling of the real fixture videos, Video-LLaVA preprocessing, bad files."""

import math

import av
import numpy as np
import pytest
import torch
from conftest import fixture_path

from imuspec.video import CLIP_MEAN, CLIP_STD, VideoError, read_video, video_pixels


def write_video(path, frames, rate=10, video=True, audio=False):
    """An mpeg4 video of ``frames`` (uint8 RGB), optionally with an audio track (or only that)."""
    c = av.open(str(path), mode="w")
    if video:
        v = c.add_stream("mpeg4", rate=rate)
        v.height, v.width, v.pix_fmt = 48, 32, "yuv420p"
        for f in frames:
            c.mux(v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(v.encode(None))
    if audio:
        a = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        c.mux(a.encode(frame))
        c.mux(a.encode(None))
    c.close()


@pytest.mark.parametrize("name,n,size", [("sample_demo_1.mp4", 243, (360, 640)), ("sample_demo_9.mp4", 219, (336, 596))])
def test_fixture_videos_sample_eight_frames_uniformly(name, n, size):
    path = fixture_path("videos", name)
    clip = read_video(path)
    with av.open(str(path)) as c:  # independent: decode every frame
        every = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    assert clip.n_frames == len(every) == n
    expected = [i * (n - 1) // 7 for i in range(8)]
    assert clip.indices.tolist() == expected and expected[0] == 0 and expected[-1] == n - 1
    assert clip.frames.shape == (8, *size, 3) and clip.frames.dtype == np.uint8
    for k, i in enumerate(expected):
        assert np.array_equal(clip.frames[k], every[i][1])
        assert clip.times_s[k] == pytest.approx(every[i][0])
    assert np.all(np.diff(clip.times_s) > 0)


def test_short_video_repeats_frames(tmp_path):
    frames = [np.full((48, 32, 3), 80 * i, np.uint8) for i in range(3)]
    write_video(tmp_path / "three.mp4", frames)
    clip = read_video(tmp_path / "three.mp4")
    assert clip.n_frames == 3 and clip.indices.tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    assert clip.times_s.tolist() == pytest.approx([0, 0, 0, 0, 0.1, 0.1, 0.1, 0.2])


@pytest.mark.parametrize("h,w", [(360, 640), (640, 360), (300, 300)])
def test_pixels_short_side_centre_crop_and_clip_normalisation(h, w):
    """A ramp along the long side: after bilinear scaling and the centre crop, pixel j shows the source column
    (j + left + 0.5) * w / w' - 0.5, with w' = floor(w * 224 / h) and left = round((w' - 224) / 2)."""
    long_w = max(h, w)
    ramp = np.linspace(0, 255, long_w)
    img = np.broadcast_to(ramp[None, :, None] if w >= h else ramp[:, None, None], (h, w, 3))
    pix = video_pixels(np.round(img).astype(np.uint8)[None].repeat(2, 0))
    assert pix.shape == (2, 3, 224, 224) and pix.dtype == torch.float32
    scaled = math.floor(long_w * 224 / min(h, w))
    left = round((scaled - 224) / 2)
    src = np.clip((np.arange(224) + left + 0.5) * long_w / scaled - 0.5, 0, long_w - 1)
    expected = np.interp(src, np.arange(long_w), np.round(ramp)) / 255
    for c in range(3):
        got = pix[0, c].numpy() * CLIP_STD[c] + CLIP_MEAN[c]
        line = got[0] if w >= h else got[:, 0]
        assert np.abs(line - expected).max() < 1e-5
        assert np.abs(got - (got[:1] if w >= h else got[:, :1])).max() < 1e-5  # constant across the short side


def test_bad_video_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such video file"):
        read_video(tmp_path / "absent.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty\.mp4: not a readable video file"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match=r"notes\.mp4: not a readable video file"):
        read_video(tmp_path / "notes.mp4")
    real = fixture_path("videos", "sample_demo_3.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(real[:20000])  # header promises 146 frames, the data is gone
    with pytest.raises(VideoError, match=r"cut\.mp4: decoding failed at the first frame"):
        read_video(tmp_path / "cut.mp4")
    write_video(tmp_path / "sound.mkv", [], video=False, audio=True)
    with pytest.raises(VideoError, match=r"sound\.mkv: has no video stream"):
        read_video(tmp_path / "sound.mkv")
    write_video(tmp_path / "silent.mkv", [], audio=True)
    with pytest.raises(VideoError, match=r"silent\.mkv: the video stream has no frames"):
        read_video(tmp_path / "silent.mkv")
    with pytest.raises(ValueError, match=r"expected uint8 RGB \[N, H, W, 3\]"):
        video_pixels(np.zeros((2, 10, 10), np.uint8))
