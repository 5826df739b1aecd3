"""ClassMix / CutMix (``engines.data.augment.mix_views``, ``segstream train --mix``)."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest

from engines.data import IGNORE, AugmentConfig, SplitData, augment
from engines.data.augment import mix_views
from engines.spec import ClassInfo
from engines.train_config import TrainConfig, resumed_config


def _views(h: int = 30, w: int = 40) -> tuple[np.ndarray, ...]:
    """View A: classes 0/1 in halves, grey image; view B: classes 2..5 in bands plus an
    IGNORE band, its image coding the class in the red channel."""
    lbl_a = np.zeros((h, w), np.uint8)
    lbl_a[:, w // 2:] = 1
    img_a = np.full((h, w, 3), 7, np.uint8)
    lbl_b = np.zeros((h, w), np.uint8)
    for k, v in enumerate((2, 3, 4, 5, IGNORE)):
        lbl_b[k * h // 5:(k + 1) * h // 5] = v
    img_b = np.zeros((h, w, 3), np.uint8)
    img_b[..., 0] = lbl_b
    img_b[..., 1] = 200
    return img_a, lbl_a, img_b, lbl_b


@pytest.mark.parametrize("seed", range(8))
def test_classmix_pastes_whole_classes_of_b_with_their_pixels(seed: int) -> None:
    img_a, lbl_a, img_b, lbl_b = _views()
    img, lbl = mix_views(img_a, lbl_a, img_b, lbl_b, np.random.default_rng(seed), "classmix")
    pasted = (img[..., 1] == 200)  # (H, W): the pixels that came from B
    np.testing.assert_array_equal(img[pasted], img_b[pasted])
    np.testing.assert_array_equal(lbl[pasted], lbl_b[pasted])
    np.testing.assert_array_equal(img[~pasted], img_a[~pasted])
    np.testing.assert_array_equal(lbl[~pasted], lbl_a[~pasted])
    chosen = set(np.unique(lbl_b[pasted]).tolist())
    assert len(chosen) == 2 and IGNORE not in chosen  # half of B's 4 classes, never void
    for c in chosen:  # a chosen class comes whole
        assert pasted[lbl_b == c].all()
    assert (img_a == 7).all() and (lbl_a <= 1).all()  # inputs untouched


def test_classmix_picks_different_classes_across_draws() -> None:
    img_a, lbl_a, img_b, lbl_b = _views()
    picks = set()
    for seed in range(20):
        _, lbl = mix_views(img_a, lbl_a, img_b, lbl_b, np.random.default_rng(seed), "classmix")
        picks.add(tuple(sorted(set(np.unique(lbl).tolist()) - {0, 1})))
    assert len(picks) >= 4, picks


def test_classmix_of_an_all_void_view_changes_nothing() -> None:
    img_a, lbl_a, img_b, _ = _views()
    img, lbl = mix_views(img_a, lbl_a, img_b, np.full_like(lbl_a, IGNORE),
                         np.random.default_rng(0), "classmix")
    np.testing.assert_array_equal(img, img_a)
    np.testing.assert_array_equal(lbl, lbl_a)


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_pastes_one_box_of_a_quarter_to_half_the_crop(seed: int) -> None:
    img_a, lbl_a, img_b, lbl_b = _views(60, 80)
    img, lbl = mix_views(img_a, lbl_a, img_b, lbl_b, np.random.default_rng(seed), "cutmix")
    pasted = img[..., 1] == 200
    ys, xs = np.nonzero(pasted)
    box = np.zeros_like(pasted)
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    np.testing.assert_array_equal(pasted, box)  # one rectangle
    assert 0.23 <= pasted.mean() <= 0.52, pasted.mean()
    np.testing.assert_array_equal(lbl[pasted], lbl_b[pasted])  # IGNORE of B included
    np.testing.assert_array_equal(lbl[~pasted], lbl_a[~pasted])


def test_mix_refuses_views_of_two_shapes_and_unknown_modes() -> None:
    img_a, lbl_a, img_b, lbl_b = _views()
    with pytest.raises(ValueError, match="one shape"):
        mix_views(img_a, lbl_a, img_b[:-1], lbl_b[:-1], np.random.default_rng(0), "cutmix")
    with pytest.raises(ValueError, match="classmix"):
        mix_views(img_a, lbl_a, img_b, lbl_b, np.random.default_rng(0), "mixup")
    with pytest.raises(ValueError, match="mix must be one of"):
        AugmentConfig(mix="mixup")
    with pytest.raises(ValueError, match="mix_prob"):
        AugmentConfig(mix="cutmix", mix_prob=1.5)


def _coded_split(n: int = 6, h: int = 24, w: int = 32) -> SplitData:
    """Frames whose red channel codes their label (40 * class + 20) and whose green channel
    codes the frame, each frame with its own layout of classes 0..4."""
    images, labels = [], []
    for f in range(n):
        lbl = ((np.arange(w)[None, :] // 8 + np.arange(h)[:, None] // 6 + f) % 5).astype(np.uint8)
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = 40 * lbl + 20
        img[..., 1] = 30 * f + 10
        images.append(img)
        labels.append(lbl)
    return SplitData(images, labels, [f"f{f}" for f in range(n)],
                     [ClassInfo(k, f"c{k}", (k, k, k)) for k in range(5)], "coded")


def test_train_dataset_mixes_deterministically_and_keeps_labels_on_their_pixels() -> None:
    torch = pytest.importorskip("torch")
    from engines.data.torch_dataset import TrainDataset

    data = _coded_split()
    plain_aug = AugmentConfig(crop=(16, 16), scale=(1.0, 1.0), brightness=0, contrast=0,
                              saturation=0)
    mixed_aug = replace(plain_aug, mix="classmix", mix_prob=1.0)
    identity = ((0.0,) * 3, (1 / 255,) * 3)  # to_tensor gives the pixel values back
    plain = TrainDataset(data, plain_aug, *identity, seed=3)
    mixed = TrainDataset(data, mixed_aug, *identity, seed=3)
    frames_seen = set()
    for i in range(len(data)):
        # without --mix: exactly the augment() of before, from the sample's own generator
        ref_img, ref_lbl = augment(data.images[i], data.labels[i],
                                   np.random.default_rng([3, 0, i]), plain_aug)
        x, y = plain[i]
        np.testing.assert_array_equal(y.numpy(), ref_lbl)
        np.testing.assert_allclose(x.numpy().transpose(1, 2, 0), ref_img, atol=1e-3)
        x, y = mixed[i]
        x2, y2 = mixed[i]
        assert torch.equal(x, x2) and torch.equal(y, y2)  # a pure function of (seed, e, i)
        img = np.rint(x.numpy().transpose(1, 2, 0))
        valid = y.numpy() != IGNORE
        np.testing.assert_array_equal((img[..., 0][valid] - 20) // 40, y.numpy()[valid])
        frames = set(((img[..., 1][valid] - 10) // 30).astype(int).tolist())
        assert i in frames or len(frames) == 1  # this frame, plus another pasted in
        assert len(frames) <= 2
        frames_seen |= frames - {i}
    assert frames_seen  # some pixels came from other frames


def test_mix_is_part_of_the_recipe_a_resume_keeps() -> None:
    with pytest.raises(ValueError, match="mix must be one of"):
        TrainConfig(model="m", data="d", out="o", mix="mixup")
    with pytest.raises(ValueError, match="mix_prob"):
        TrainConfig(model="m", data="d", out="o", mix="classmix", mix_prob=-0.1)
    run = TrainConfig(model="m", data="d", out="o", mix="classmix", mix_prob=0.3)
    resumed = resumed_config(TrainConfig(model="m", data="d", out="o", resume=True), asdict(run))
    assert (resumed.mix, resumed.mix_prob) == ("classmix", 0.3)
    with pytest.raises(ValueError, match="--mix 'cutmix'"):
        resumed_config(TrainConfig(model="m", data="d", out="o", resume=True, mix="cutmix"),
                       asdict(run))
    # a run from before --mix existed trained without it: --resume --mix is refused too
    old = {k: v for k, v in asdict(TrainConfig(model="m", data="d", out="o")).items()
           if k not in ("mix", "mix_prob")}
    assert resumed_config(TrainConfig(model="m", data="d", out="o", resume=True), old).mix is None
    with pytest.raises(ValueError, match="--mix 'classmix' \\(the run has None\\)"):
        resumed_config(TrainConfig(model="m", data="d", out="o", resume=True, mix="classmix"),
                       old)
    with pytest.raises(ValueError, match="without a --mix mode"):
        TrainConfig(model="m", data="d", out="o", mix_prob=0.3)


def test_photometric_strength_is_part_of_the_recipe_a_resume_keeps() -> None:
    with pytest.raises(ValueError, match="photometric must be one of"):
        TrainConfig(model="m", data="d", out="o", photometric="loud")
    run = TrainConfig(model="m", data="d", out="o", photometric="strong")
    resumed = resumed_config(TrainConfig(model="m", data="d", out="o", resume=True), asdict(run))
    assert resumed.photometric == "strong"
    old = {k: v for k, v in asdict(TrainConfig(model="m", data="d", out="o")).items()
           if k != "photometric"}  # a run from before the option trained with standard
    assert resumed_config(TrainConfig(model="m", data="d", out="o", resume=True),
                          old).photometric == "standard"
    with pytest.raises(ValueError, match="--photometric 'strong' \\(the run has 'standard'\\)"):
        resumed_config(TrainConfig(model="m", data="d", out="o", resume=True,
                                   photometric="strong"), old)
