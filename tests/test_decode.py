"""load_clip / load_clips on real files the tests encode: VP9 webm, H.264 mp4, MJPEG and MPEG-4 avi, JPEG folders.

Frame identity: "level" videos hold one solid grey level per frame (10 + 20·i), so the decoded
level says which frame came back. Pixel maths: compared with a direct torchvision computation.
Tolerances are in grey levels (1 level = 1/255 before normalisation).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from helpers import CODECS, write_video
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from taskadapter_fast.data import decode as decode_module
from taskadapter_fast.data import decode_frames, load_clip
from taskadapter_fast.data.decode import (
    CLIP_MEAN,
    CLIP_STD,
    DecoderUnavailableError,
    MissingVideoError,
    SkipCounter,
    UnsupportedCodecError,
    VideoDecodeError,
    center_crop_offset,
    choose_decoder,
    dali_gpu_index,
    dali_unavailable_reasons,
    load_clips,
    probe_video,
    resize_size,
)

NUM_FRAMES = 12
WIDTH, HEIGHT = 48, 40  # not square: the resize must not keep the aspect ratio
SIZE = 32  # crop S; frames are resized to int(1.15 * 32) = 36
LEVELS = 10 + 20 * np.arange(NUM_FRAMES)

MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

needs_dali_cpu = pytest.mark.skipif(
    bool(dali_unavailable_reasons("cpu")), reason="; ".join(dali_unavailable_reasons("cpu")) or "DALI available"
)
needs_dali_gpu = pytest.mark.skipif(
    bool(dali_unavailable_reasons("gpu")), reason="; ".join(dali_unavailable_reasons("gpu")) or "DALI GPU available"
)


def write_frames(folder, frames_FHW3: np.ndarray, quality: int = 95) -> None:
    folder.mkdir(parents=True)
    for number, frame in enumerate(frames_FHW3, start=1):
        Image.fromarray(frame).save(folder / f"img_{number:05d}.jpg", quality=quality)


def level_frames() -> np.ndarray:
    return np.broadcast_to(LEVELS.astype(np.uint8)[:, None, None, None], (NUM_FRAMES, HEIGHT, WIDTH, 3)).copy()


def textured_frames(seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus a moving disc: detail for the resize maths, kind to lossy codecs."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    frames = []
    for f in range(NUM_FRAMES):
        phase = rng.uniform(0, 2 * np.pi, 3)
        image = np.stack([128 + 90 * np.sin(xs / 7 + ys / 11 + p + f / 3) for p in phase], axis=-1)
        disc = (xs - 8 - 2.5 * f) ** 2 + (ys - 20) ** 2 < 36
        image[disc] = (250, 40, 40)
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(frames)


def to_levels(clip_T3SS: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation → grey levels [T, 3, S, S] in 0..255 (float)."""
    return (clip_T3SS.float().cpu() * STD + MEAN) * 255.0


def frame_ids(clip_T3SS: torch.Tensor) -> list[int]:
    """Which level-video frame each output frame is (nearest grey level)."""
    means = to_levels(clip_T3SS).mean(dim=(1, 2, 3)).numpy()
    return [int(np.abs(LEVELS - value).argmin()) for value in means]


def read_rgb(path) -> torch.Tensor:
    """A JPEG → uint8 [3, H, W] through Pillow."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


def reference_clip(frames_T3HW: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """docs/method.md §1.3 with torchvision alone: square bilinear resize, crop, [0, 1], CLIP normalise."""
    side = resize_size(SIZE)
    resized = tvf.resize(frames_T3HW, [side, side], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)
    cropped = tvf.crop(resized, top, left, SIZE, SIZE)
    scaled = tvf.to_dtype(cropped, torch.float32, scale=True)
    return tvf.normalize(scaled, list(CLIP_MEAN), list(CLIP_STD))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    files = {}
    for codec, (suffix, *_) in CODECS.items():
        files[f"level_{codec}"] = root / f"level_{codec}{suffix}"
        write_video(files[f"level_{codec}"], codec, level_frames())
        files[f"tex_{codec}"] = root / f"tex_{codec}{suffix}"
        write_video(files[f"tex_{codec}"], codec, textured_frames())
    files["level_frames"] = root / "level_frames"
    write_frames(files["level_frames"], level_frames())
    files["tex_frames"] = root / "tex_frames"
    write_frames(files["tex_frames"], textured_frames())
    return files


# ------------------------------------------------------------------------------------------ frames


@pytest.mark.parametrize("source", ["vp9", "h264", "mjpeg", "mpeg4", "frames"])
def test_pyav_returns_the_requested_frames_in_order(media, source):
    indices = [0, 5, 2, 11, 7, 7, 1]
    clip = load_clip(media[f"level_{source}"], indices, image_size=SIZE, decoder="pyav")
    assert clip.shape == (len(indices), 3, SIZE, SIZE) and clip.dtype == torch.float32
    assert frame_ids(clip) == indices


@pytest.mark.parametrize("source", ["vp9", "h264", "frames"])
def test_indices_past_the_end_repeat_the_last_frame(media, source, caplog):
    decode_frames._short_folders_reported.clear()  # said once per folder and process
    with caplog.at_level(logging.WARNING):
        clip = load_clip(media[f"level_{source}"], [0, 11, 12, 40], image_size=SIZE, decoder="pyav")
        load_clip(media[f"level_{source}"], [0, 13], image_size=SIZE, decoder="pyav")
    assert frame_ids(clip) == [0, 11, 11, 11]
    if source == "frames":  # a split file that counts more frames than the folder holds: said once
        assert caplog.text.count("holds 12 frames but frame 41 was asked") == 1


def test_probe_counts_frames_and_names_the_codec(media):
    for codec in CODECS:
        info = probe_video(media[f"level_{codec}"])
        assert (info.codec, info.num_frames, info.truncated) == (codec, NUM_FRAMES, False)
        assert (info.width, info.height) == (WIDTH, HEIGHT)


# ------------------------------------------------------------------------------------------ pixel maths


def test_eval_matches_torchvision_resize_centre_crop_normalise(media):
    folder = media["tex_frames"]
    indices = [3, 0, 9]
    frames = torch.stack([read_rgb(folder / f"img_{i + 1:05d}.jpg") for i in indices])
    expected = reference_clip(frames, *center_crop_offset(SIZE))
    clip = load_clip(folder, indices, image_size=SIZE, decoder="pyav")
    torch.testing.assert_close(clip, expected, atol=1e-5, rtol=1e-5)
    assert center_crop_offset(224) == (16, 16) and resize_size(224) == 257


def test_train_crop_uses_the_given_offset_and_random_crops_stay_inside(media):
    folder = media["tex_frames"]
    frames = read_rgb(folder / "img_00005.jpg")[None]
    clip = load_clip(folder, [4], image_size=SIZE, train=True, crop_offset=(1, 3), decoder="pyav")
    torch.testing.assert_close(clip, reference_clip(frames, 1, 3), atol=1e-5, rtol=1e-5)

    margin = resize_size(SIZE) - SIZE
    candidates = {
        (top, left): reference_clip(frames, top, left) for top in range(margin + 1) for left in range(margin + 1)
    }
    torch.manual_seed(0)
    found = set()
    for _ in range(6):
        clip = load_clip(folder, [4], image_size=SIZE, train=True, decoder="pyav")
        matches = [offset for offset, ref in candidates.items() if torch.allclose(clip, ref, atol=1e-5)]
        assert matches, "a random training crop is not any valid (top, left) crop"
        found.add(matches[0])
    assert len(found) > 1, "random crops should vary"


def test_matches_the_official_pillow_pipeline_within_one_grey_level(media):
    """Official style: Pillow open → Resize((L, L)) bilinear → CenterCrop → ToTensor → Normalize."""
    folder = media["tex_frames"]
    side, (top, left) = resize_size(SIZE), center_crop_offset(SIZE)
    reference = []
    for i in (2, 6):
        image = Image.open(folder / f"img_{i + 1:05d}.jpg").convert("RGB").resize((side, side), Image.BILINEAR)
        array = np.asarray(image)[top : top + SIZE, left : left + SIZE]
        reference.append(torch.from_numpy(array.copy()).permute(2, 0, 1).float())
    clip = load_clip(folder, [2, 6], image_size=SIZE, decoder="pyav")
    assert (to_levels(clip) - torch.stack(reference)).abs().max() <= 1.01


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_video_and_jpeg_folder_of_the_same_frames_agree(media, codec):
    """Stated tolerance: mean |difference| <= 3 grey levels, 99th percentile <= 12 (lossy codecs, 4:2:0 chroma)."""
    indices = list(range(NUM_FRAMES))
    from_video = to_levels(load_clip(media[f"tex_{codec}"], indices, image_size=SIZE, decoder="pyav"))
    from_jpeg = to_levels(load_clip(media["tex_frames"], indices, image_size=SIZE, decoder="pyav"))
    difference = (from_video - from_jpeg).abs()
    assert difference.mean() <= 3.0
    assert torch.quantile(difference.flatten(), 0.99) <= 12.0


# ------------------------------------------------------------------------------------------ batched form


def test_load_clips_stacks_mixed_sources_and_matches_load_clip(media):
    paths = [media["tex_h264"], media["tex_frames"], media["level_vp9"]]
    indices = np.array([[0, 4, 8], [1, 2, 3], [11, 10, 9]])
    batch = load_clips(paths, indices, image_size=SIZE, decoder="pyav")
    assert batch.shape == (3, 3, 3, SIZE, SIZE)
    for v, path in enumerate(paths):
        torch.testing.assert_close(batch[v], load_clip(path, indices[v], image_size=SIZE, decoder="pyav"))
    offsets = np.array([[0, 0], [4, 4], [2, 1]])
    train_batch = load_clips(paths, indices, image_size=SIZE, train=True, crop_offsets=offsets, decoder="pyav")
    single = load_clip(paths[2], indices[2], image_size=SIZE, train=True, crop_offset=(2, 1), decoder="pyav")
    torch.testing.assert_close(train_batch[2], single)
    half = load_clips(paths, indices, image_size=SIZE, decoder="pyav", dtype=torch.float16)
    assert half.dtype == torch.float16


# ------------------------------------------------------------------------------------------ bad input


def test_missing_files_raise_missing_video_error_naming_them(media, tmp_path):
    for path in (tmp_path / "nope.mp4", tmp_path / "no_folder"):
        with pytest.raises(MissingVideoError, match=str(path)) as caught:
            load_clip(path, [0], image_size=SIZE, decoder="pyav")
        assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)
    gap = tmp_path / "gap"
    write_frames(gap, level_frames()[:6])
    (gap / "img_00004.jpg").unlink()
    with pytest.raises(MissingVideoError, match="img_00004.jpg"):
        load_clip(gap, [0, 3], image_size=SIZE, decoder="pyav")


def test_frame_folders_are_found_by_being_folders_and_read_only_as_named(media, tmp_path):
    named_like_a_video = tmp_path / "v_brush_hair_1.avi"  # HMDB51/UCF101 frame folders are often named so
    write_frames(named_like_a_video, level_frames()[:6])
    assert decode_module.video_kind(named_like_a_video) == "frames"
    assert frame_ids(load_clip(named_like_a_video, [0, 5, 2], image_size=SIZE, decoder="pyav")) == [0, 5, 2]
    six_digits = tmp_path / "six_digits"
    write_frames(six_digits, level_frames()[:6])
    for number in range(1, 7):
        (six_digits / f"img_{number:05d}.jpg").rename(six_digits / f"img_{number:06d}.jpg")
    with pytest.raises(VideoDecodeError, match=r"six_digits: 6 frame files, but not named img_00001\.jpg"):
        load_clip(six_digits, [0], image_size=SIZE, decoder="pyav")


def test_corrupt_and_truncated_files_raise_video_decode_error(media, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    cut_webm = tmp_path / "cut.webm"
    data = media["level_vp9"].read_bytes()
    cut_webm.write_bytes(data[: int(len(data) * 0.7)])
    cut_mp4 = tmp_path / "cut.mp4"
    data = media["level_h264"].read_bytes()
    cut_mp4.write_bytes(data[: int(len(data) * 0.7)])
    broken_jpeg = tmp_path / "broken"
    write_frames(broken_jpeg, level_frames()[:3])
    (broken_jpeg / "img_00002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for path, indices in ((garbage, [0]), (cut_webm, [0, 11]), (cut_mp4, [0]), (broken_jpeg, [0, 1])):
        with pytest.raises(VideoDecodeError, match=path.name):
            load_clip(path, indices, image_size=SIZE, decoder="pyav")
    with pytest.raises(VideoDecodeError, match="truncated"):
        load_clip(cut_webm, [11], image_size=SIZE, decoder="pyav")


def test_bad_arguments_are_value_errors(media, monkeypatch):
    path = media["level_frames"]
    with pytest.raises(ValueError, match=">= 0"):
        load_clip(path, [0, -1], image_size=SIZE)
    with pytest.raises(ValueError, match="crop_offset"):
        load_clip(path, [0], image_size=SIZE, train=True, crop_offset=(0, 99))
    with pytest.raises(ValueError, match="train=True"):
        load_clip(path, [0], image_size=SIZE, crop_offset=(0, 0))
    with pytest.raises(ValueError, match="decoder"):
        load_clip(path, [0], image_size=SIZE, decoder="ffmpeg")
    with pytest.raises(ValueError, match=r"\[V, T\]"):
        load_clips([path, path], [[0, 1]], image_size=SIZE)
    monkeypatch.setenv("TAF_DECODER", "nonsense")
    with pytest.raises(ValueError, match="TAF_DECODER"):
        load_clip(path, [0], image_size=SIZE)


def test_dali_gpu_decodes_on_the_gpu_its_clips_are_bound_for():
    # the episode loader decodes in worker threads, whose current CUDA device is always 0: an explicit
    # target device must choose the pipeline's GPU (checked without touching CUDA)
    assert dali_gpu_index(torch.device("cuda", 3)) == 3
    assert dali_gpu_index("cuda:2") == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_dali_gpu_without_a_gpu_says_why(media):
    with pytest.raises(DecoderUnavailableError, match="dali_gpu"):
        load_clip(media["level_frames"], [0], image_size=SIZE, decoder="dali_gpu")


def test_skip_counter_skips_and_counts_every_bad_video(media, tmp_path, caplog):
    missing = tmp_path / "gone.webm"
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + bytes(500))
    skips = SkipCounter()
    good = skips.load_clip(media["level_h264"], [0, 1], image_size=SIZE, decoder="pyav")
    assert good is not None and skips.count == 0
    with caplog.at_level(logging.WARNING, logger="taskadapter_fast.data.decode"):
        batch = skips.load_clips(
            [media["level_h264"], missing, corrupt], [[0, 1], [0, 1], [0, 1]], image_size=SIZE, decoder="pyav"
        )
    assert batch is None
    assert skips.count == 2 and skips.bad_paths == {str(missing), str(corrupt)}
    assert str(missing) in caplog.text and str(corrupt) in caplog.text
    assert "2 unreadable video(s) skipped" in skips.summary()


# ------------------------------------------------------------------------------------------ DALI


def assert_dali_close(dali: torch.Tensor, pyav: torch.Tensor, source: str) -> None:
    """Stated tolerances, in grey levels. JPEG frames (both libjpeg-turbo): at most 1 level apart.
    Videos: DALI and FFmpeg's swscale upsample 4:2:0 chroma differently, which moves saturated colour
    edges by tens of levels on a few pixels: mean <= 2.5 levels, 99th percentile <= 16."""
    difference = (to_levels(dali).cpu() - to_levels(pyav)).abs()
    if source == "frames":
        assert difference.max() <= 1.01
    else:
        assert difference.mean() <= 2.5 and torch.quantile(difference.flatten(), 0.99) <= 16.0


@pytest.mark.dali
@needs_dali_cpu
@pytest.mark.parametrize("source", ["vp9", "mjpeg", "frames"])
def test_dali_cpu_matches_pyav(media, source):
    indices = [0, 5, 2, 11, 7, 30]
    dali = load_clip(media[f"tex_{source}"], indices, image_size=SIZE, decoder="dali_cpu")
    pyav = load_clip(media[f"tex_{source}"], indices, image_size=SIZE, decoder="pyav")
    assert dali.shape == pyav.shape == (len(indices), 3, SIZE, SIZE)
    assert_dali_close(dali, pyav, source)
    levels = load_clip(media[f"level_{source}"], indices, image_size=SIZE, decoder="dali_cpu")
    assert frame_ids(levels) == [0, 5, 2, 11, 7, 11]


@pytest.mark.dali
@needs_dali_cpu
def test_dali_cpu_batches_and_train_crops_like_pyav(media):
    paths = [media["tex_vp9"], media["tex_frames"], media["tex_mjpeg"]]
    indices = np.array([[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    offsets = np.array([[0, 4], [4, 0], [2, 2]])
    dali = load_clips(paths, indices, image_size=SIZE, train=True, crop_offsets=offsets, decoder="dali_cpu")
    pyav = load_clips(paths, indices, image_size=SIZE, train=True, crop_offsets=offsets, decoder="pyav")
    assert dali.shape == (3, 3, 3, SIZE, SIZE)
    for v, source in enumerate(["vp9", "frames", "mjpeg"]):
        assert_dali_close(dali[v], pyav[v], source)


@pytest.mark.dali
@needs_dali_cpu
def test_dali_cpu_refuses_h264_and_auto_falls_back(media, caplog, monkeypatch):
    with pytest.raises(UnsupportedCodecError, match="h264"):
        load_clip(media["level_h264"], [0], image_size=SIZE, decoder="dali_cpu")
    with pytest.raises(UnsupportedCodecError, match="mpeg4"):
        load_clip(media["level_mpeg4"], [0], image_size=SIZE, decoder="dali_cpu")
    if not torch.cuda.is_available():
        assert choose_decoder(media["level_h264"]) == "pyav"
        assert choose_decoder(media["level_vp9"]) == choose_decoder(media["level_frames"]) == "dali_cpu"
    monkeypatch.setattr(decode_module, "_logged_choices", set())
    with caplog.at_level(logging.INFO, logger="taskadapter_fast.data.decode"):
        clips = load_clips([media["level_h264"], media["level_vp9"]], [[3, 4], [5, 6]], image_size=SIZE)
    assert [frame_ids(clip) for clip in clips] == [[3, 4], [5, 6]]
    assert caplog.text.count("decoder=auto picked") == 2
    monkeypatch.setenv("TAF_DECODER", "pyav")
    assert choose_decoder(media["level_vp9"]) == "pyav"


@pytest.mark.dali
@needs_dali_cpu
def test_dali_cpu_bad_files_raise_video_decode_error(media, tmp_path):
    cut = tmp_path / "cut.webm"
    data = media["level_vp9"].read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(VideoDecodeError, match="cut.webm"):
        load_clip(cut, [0, 11], image_size=SIZE, decoder="dali_cpu")
    broken = tmp_path / "broken"
    write_frames(broken, level_frames()[:3])
    (broken / "img_00002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(VideoDecodeError, match="broken"):
        load_clips([media["level_frames"], broken], [[0, 1], [0, 1]], image_size=SIZE, decoder="dali_cpu")
    # The pipeline is rebuilt after an error: the next good batch decodes.
    assert frame_ids(load_clip(media["level_frames"], [4], image_size=SIZE, decoder="dali_cpu")) == [4]


@pytest.mark.dali
@pytest.mark.gpu
@needs_dali_gpu
@pytest.mark.parametrize("source", ["vp9", "h264", "frames"])
def test_dali_gpu_matches_pyav_and_stays_on_the_gpu(media, source):
    indices = [0, 5, 2, 11]
    dali = load_clip(media[f"tex_{source}"], indices, image_size=SIZE, decoder="dali_gpu")
    assert dali.is_cuda
    pyav = load_clip(media[f"tex_{source}"], indices, image_size=SIZE, decoder="pyav")
    assert_dali_close(dali, pyav, source)


@pytest.mark.dali
@pytest.mark.gpu
@needs_dali_gpu
def test_dali_gpu_decodes_from_worker_threads(media):
    # what the episode loader does: decode in background threads (their own current device and stream)
    indices = np.array([[0, 5, 2, 11], [3, 1, 4, 1]])
    paths = [media["tex_vp9"], media["tex_frames"]]
    target = torch.device("cuda", torch.cuda.current_device())
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(load_clips, paths, indices, SIZE, decoder="dali_gpu", device=target) for _ in range(4)]
        batches = [future.result() for future in futures]
    pyav = load_clips(paths, indices, SIZE, decoder="pyav")
    for batch in batches:
        assert batch.device == target
        for clip, expected, source in zip(batch, pyav, ["vp9", "frames"], strict=True):
            assert_dali_close(clip, expected, source)
