"""Evenly spaced frames of a video, decoded with PyAV.

PyAV (the `av` package) wraps FFmpeg's libraries and ships them inside its wheels, so decoding
H.264 / HEVC mp4 files needs no system FFmpeg; it is maintained (releases track FFmpeg) and
decodes frame-accurately after a seek. decord is unmaintained, torchvision's video reader is
deprecated in favour of torchcodec, which needs a system FFmpeg, and OpenCV is a far larger
dependency for the same FFmpeg underneath.
"""
from pathlib import Path

import av
from PIL import Image

# Open-Sora's LLaVA video captioning reads frames at 10 %, 50 % and 90 % of the video: three
# evenly spaced frames that avoid black lead-in and fade-out frames.
DEFAULT_POINTS = (0.1, 0.5, 0.9)


class VideoError(ValueError):
    """A video that cannot be opened or decoded."""


def evenly_spaced_points(n: int) -> tuple[float, ...]:
    """n positions in (0, 1), evenly spaced, 10 % in from each end: 3 -> (0.1, 0.5, 0.9)."""
    if n == 1:
        return (0.5,)
    return tuple(round(0.1 + 0.8 * i / (n - 1), 6) for i in range(n))


def extract_frames(path: str | Path, points=DEFAULT_POINTS) -> list[Image.Image]:
    """The RGB frames shown at each fraction of the video's duration in `points`.

    Seeks to the keyframe before each point and decodes forward to the first frame at or after
    it, so the result does not depend on earlier calls. Raises VideoError if the file cannot be
    decoded.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.duration is not None:
                duration = float(stream.duration * stream.time_base)
                start = float((stream.start_time or 0) * stream.time_base)
            elif container.duration is not None:
                duration, start = container.duration / av.time_base, 0.0
            else:
                return _frames_by_count(container, stream, points)
            frames = []
            for p in points:
                target = start + p * duration
                container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
                frame = None
                for frame in container.decode(stream):
                    if frame.time is not None and frame.time + 1e-6 >= target:
                        break
                if frame is None:
                    raise VideoError(f"{path}: no frame decoded at {p:.0%} of the video")
                frames.append(frame.to_image())
            return frames
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: {e}") from None


def _frames_by_count(container, stream, points) -> list[Image.Image]:
    """Without a known duration: count the frames, then decode from the start and keep the
    frames at the points' indices (only those are converted and held)."""
    count = sum(1 for packet in container.demux(stream) if packet.size)
    if not count:
        raise VideoError(f"{container.name}: no frames")
    wanted = [min(int(p * count), count - 1) for p in points]
    container.seek(0, stream=stream)
    kept = {}
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted:
            kept[index] = frame.to_image()
        if index >= max(wanted):
            break
    if len(kept) != len(set(wanted)):
        raise VideoError(f"{container.name}: fewer frames decoded than its {count} packets")
    return [kept[i] for i in wanted]
