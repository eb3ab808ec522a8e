"""Frame-count and size fitting, with the messages users see."""
import pytest
import torch

from vidinv import errors, video


def frames(n, h=48, w=64):
    return torch.rand(n, h, w, 3)


def test_trim_to_4k_plus_1():
    out, note = video.fit_frame_count(frames(12), 4)
    assert out.shape[0] == 9 and "12 frames given, first 9 used" in note
    out, note = video.fit_frame_count(frames(13), 4)
    assert out.shape[0] == 13 and "13 frames used" in note


def test_frame_policy_error_names_counts():
    with pytest.raises(errors.InputError, match=r"has 12 frames, but the model needs 4k\+1 frames.*Cut it to 9"):
        video.fit_frame_count(frames(12), 4, "error")


def test_too_few_frames():
    with pytest.raises(errors.InputError, match="has 3 frame\\(s\\); this model needs at least 5"):
        video.fit_frame_count(frames(3), 4)


def test_resize_and_crop_keeps_aspect():
    f = torch.zeros(2, 40, 80, 3)
    f[:, :, 38:42] = 1.0  # a vertical bar in the middle survives the centre crop
    out, note = video.fit_size(f, 32, 32, 16)
    assert out.shape == (2, 32, 32, 3) and "centre-cropped to 32x32" in note
    assert out[:, :, 14:18].mean() > 0.5


def test_stretch():
    out, note = video.fit_size(frames(2, 40, 80), 32, 48, 16, "stretch")
    assert out.shape == (2, 32, 48, 3) and "stretched" in note


def test_size_errors():
    with pytest.raises(errors.InputError, match="is not a positive multiple of 16"):
        video.fit_size(frames(2), 40, 64, 16)
    with pytest.raises(errors.InputError, match="the video is 64x48, the model needs 32x32"):
        video.fit_size(frames(2), 32, 32, 16, "error")
    with pytest.raises(errors.InputError, match="takes only 64x48"):
        video.fit_size(frames(2), 32, 32, 16, exact=(48, 64))


def test_bad_images():
    with pytest.raises(errors.InputError, match="expected IMAGE frames"):
        video.check_images(torch.rand(3, 4, 5))
