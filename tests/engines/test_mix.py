"""ClassMix / CutMix (``engines.data.augment.mix_views``, ``segstream train --mix``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from engines.data import IGNORE, AugmentConfig, open_split
from engines.data.augment import mix_views
from engines.train_config import TrainConfig, resumed_config
from tests.engines.test_data import make_camvid


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


def test_train_dataset_mixes_deterministically_and_leaves_unmixed_samples_alone(
        tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from engines.data.torch_dataset import TrainDataset

    data = open_split(make_camvid(tmp_path / "camvid", n=6), "train")
    norm = ((0.5,) * 3, (0.25,) * 3)

    def labels(aug: AugmentConfig) -> list:
        ds = TrainDataset(data, aug, *norm, seed=3)
        return [ds[i][1] for i in range(len(data))]

    plain = labels(AugmentConfig(crop=(16, 16)))
    never = labels(AugmentConfig(crop=(16, 16), mix="classmix", mix_prob=0.0))
    always = labels(AugmentConfig(crop=(16, 16), mix="cutmix", mix_prob=1.0))
    again = labels(AugmentConfig(crop=(16, 16), mix="cutmix", mix_prob=1.0))
    # mixing off draws nothing more from the generator: the same samples as before --mix
    assert all(torch.equal(a, b) for a, b in zip(plain, never, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(always, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(plain, always, strict=True))


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
