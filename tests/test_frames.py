"""Frame extraction with PyAV, on the real MicroLens video."""
import av
import numpy as np
import pytest
from conftest import shared_path

from pipeline.frames import VideoError, evenly_spaced_points, extract_frames


@pytest.fixture
def video():
    return shared_path("microlens-sample", "videos", "10034.mp4")


def test_evenly_spaced_points():
    assert evenly_spaced_points(3) == (0.1, 0.5, 0.9)  # Open-Sora's three frames
    assert evenly_spaced_points(1) == (0.5,)
    assert evenly_spaced_points(5) == (0.1, 0.3, 0.5, 0.7, 0.9)


def test_three_frames_of_the_real_video_are_the_frames_shown_at_those_times(video):
    frames = extract_frames(video)
    assert [f.size for f in frames] == [(1280, 720)] * 3 and all(f.mode == "RGB" for f in frames)
    # Decode every frame (HEVC, 227 frames, 7.6 s) and find the first one at or after each point.
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        every = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    assert len(every) == 227
    for point, frame in zip((0.1, 0.5, 0.9), frames):
        index = next(i for i, (t, _) in enumerate(every) if t + 1e-6 >= point * duration)
        np.testing.assert_array_equal(np.asarray(frame), every[index][1])
    # Seeking makes each call independent of the previous ones.
    again = extract_frames(video, (0.9, 0.1))
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(frames[2]))
    np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(frames[0]))


def test_an_undecodable_file_raises_a_video_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError, match="broken.mp4"):
        extract_frames(bad)


def test_without_a_known_duration_the_frames_are_picked_by_count(video):
    from pipeline.frames import _frames_by_count

    with av.open(str(video)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(video)) as container:
        frames = _frames_by_count(container, container.streams.video[0], (0.1, 0.5, 0.9))
    for index, frame in zip((22, 113, 204), frames):  # int(p * 227)
        np.testing.assert_array_equal(np.asarray(frame), every[index])
