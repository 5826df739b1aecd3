"""Confusion-matrix metrics against hand-computed values; class weights and the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engines.metrics import ConfusionMatrix, SegMetrics

IGN = 255


def test_confusion_matrix_by_hand() -> None:
    target = np.array([[0, 0, 1, 1],
                       [2, 2, IGN, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 0, 2, 2]])
    cm = ConfusionMatrix(3, IGN)
    cm.update(pred, target)
    # rows = ground truth, cols = prediction; the IGN pixel (pred 2) is skipped.
    expected = np.array([[1, 1, 0],
                         [0, 2, 1],
                         [1, 0, 1]])
    np.testing.assert_array_equal(cm.matrix, expected)
    m = cm.result()
    # IoU_c = TP / (GT_c + PRED_c - TP)
    np.testing.assert_allclose(m.iou, [1 / (2 + 2 - 1), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)])
    assert m.miou == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert m.pixel_acc == pytest.approx(4 / 7)
    assert m.mean_acc == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)


def test_split_level_accumulation_is_not_a_mean_of_images() -> None:
    """One confusion matrix over the split: a class seen in one image only is scored once."""
    cm = ConfusionMatrix(2, IGN)
    cm.update(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0]))  # image 1: perfect, class 0 only
    cm.update(np.array([0, 1, 1, 1]), np.array([1, 1, 1, 1]))  # image 2: one class-1 miss
    m = cm.result()
    np.testing.assert_array_equal(cm.matrix, [[4, 0], [1, 3]])
    assert m.iou[0] == pytest.approx(4 / 5)
    assert m.iou[1] == pytest.approx(3 / 4)
    assert m.miou == pytest.approx((4 / 5 + 3 / 4) / 2)
    # The per-image average would differ (image 1: class 0 IoU 1; image 2: 0 and 3/4).
    assert m.miou != pytest.approx((1.0 + (0.0 + 0.75) / 2) / 2)


def test_absent_class_is_nan_and_excluded() -> None:
    cm = ConfusionMatrix(3, IGN)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    m = cm.result()
    assert math.isnan(m.iou[2])
    assert m.miou == 1.0
    assert m.per_class(["a", "b", "c"]) == {"a": 1.0, "b": 1.0, "c": None}


def test_false_positive_only_class_scores_zero() -> None:
    cm = ConfusionMatrix(3, IGN)
    cm.update(np.array([0, 2]), np.array([0, 0]))
    m = cm.result()
    assert m.iou[2] == 0.0
    assert m.miou == pytest.approx((0.5 + 0.0) / 2)


def test_merge_and_batch_shapes() -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, (3, 8, 8))
    p = rng.integers(0, 4, (3, 8, 8))
    whole = ConfusionMatrix(4)
    whole.update(p, t)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(p[:1], t[:1])
    b.update(p[1:], t[1:])
    a.merge(b)
    np.testing.assert_array_equal(a.matrix, whole.matrix)
    assert whole.matrix.sum() == t.size


def test_errors_name_the_problem() -> None:
    cm = ConfusionMatrix(3, IGN)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"target ids.*\[7\]"):
        cm.update(np.zeros(2), np.array([0, 7]))
    with pytest.raises(ValueError, match=r"predicted ids.*\[3\]"):
        cm.update(np.array([0, 3]), np.zeros(2))


def test_table_and_json() -> None:
    m = SegMetrics.from_matrix(np.array([[3, 1], [0, 4]]))
    js = m.to_json(["road", "car"])
    assert js["per_class_iou"] == {"road": 0.75, "car": 0.8}
    assert js["confusion_matrix"] == [[3, 1], [0, 4]]
    text = m.table(["road", "car"])
    assert "road" in text and "75.00" in text and "mIoU" in text


# ---------------------------------------------------------------- weights and loss


def test_median_frequency_weights_by_hand() -> None:
    pytest.importorskip("torch", reason="engines.losses needs torch (training)")
    from engines.losses import class_frequencies, median_frequency_weights

    a = np.array([[0, 0, 0, 1]], np.uint8)  # 4 px: class0 3, class1 1
    b = np.array([[0, 2, 2, IGN]], np.uint8)  # 4 px: class0 1, class2 2
    count, image_px = class_frequencies([a, b], 4)
    np.testing.assert_array_equal(count, [4, 1, 2, 0])
    np.testing.assert_array_equal(image_px, [8, 4, 4, 0])
    w = median_frequency_weights([a, b], 4)
    freq = np.array([4 / 8, 1 / 4, 2 / 4])
    med = np.median(freq)
    np.testing.assert_allclose(w[:3], med / freq, rtol=1e-6)
    assert w[3] == 0.0


def test_class_weight_kinds() -> None:
    pytest.importorskip("torch", reason="engines.losses needs torch (training)")
    from engines.losses import class_weights, median_frequency_weights

    labels = [np.array([[0, 0, 0, 1]], np.uint8), np.array([[0, 2, 2, IGN]], np.uint8)]
    mfb = median_frequency_weights(labels, 3)
    np.testing.assert_allclose(class_weights("mfb", labels, 3), mfb)
    np.testing.assert_allclose(class_weights("sqrt-mfb", labels, 3), np.sqrt(mfb), rtol=1e-6)
    assert class_weights("none", labels, 3) is None
    with pytest.raises(ValueError, match="valid: mfb"):
        class_weights("inverse", labels, 3)


def test_seg_loss_ignores_void_and_upsamples() -> None:
    torch = pytest.importorskip("torch")
    from engines.losses import SegLoss

    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 5.0  # confident class 1 everywhere
    target = torch.full((1, 4, 4), IGN, dtype=torch.long)
    target[0, 0, 0] = 1
    loss = SegLoss()(logits, target)
    expected = -torch.log_softmax(torch.tensor([0.0, 5.0, 0.0]), 0)[1]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    aux = SegLoss(aux_weight=0.5)((logits, logits), target)
    assert aux.item() == pytest.approx(1.5 * expected.item(), rel=1e-5)


def test_ohem_keeps_hard_pixels() -> None:
    torch = pytest.importorskip("torch")
    from engines.losses import SegLoss

    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = torch.tensor([9.0, 9.0, 9.0, -9.0])  # three easy class-0 pixels, one hard
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    plain = SegLoss()(logits, target).item()
    ohem = SegLoss(ohem_thresh=0.7, ohem_min_kept=1)(logits, target).item()
    sp = torch.nn.functional.softplus
    hard = sp(torch.tensor(9.0)).item()  # -log softmax: logits (-9, 0), true class 0
    easy = sp(torch.tensor(-9.0)).item()  # logits (9, 0)
    assert ohem == pytest.approx(hard, rel=1e-5)
    assert plain == pytest.approx((hard + 3 * easy) / 4, rel=1e-5)


def test_ohem_chooses_hard_pixels_by_probability_not_by_class_weight() -> None:
    """A road pixel at p = 0.1 is hard and a bicyclist pixel at p = 0.96 is easy, whatever
    the class weights (road 0.15, bicyclist 8.9); the weights then scale the chosen."""
    torch = pytest.importorskip("torch")
    from engines.losses import SegLoss

    p = torch.tensor([0.1, 0.96])
    logits = torch.zeros(1, 2, 1, 2)  # pixel 0 true class 0 at p 0.1; pixel 1 class 1 at 0.96
    logits[0, 0, 0, 0] = torch.log(p[0] / (1 - p[0]))
    logits[0, 1, 0, 1] = torch.log(p[1] / (1 - p[1]))
    target = torch.tensor([[[0, 1]]])
    weight = torch.tensor([0.149, 8.86])
    loss = SegLoss(weight, ohem_thresh=0.7, ohem_min_kept=1)(logits, target).item()
    assert loss == pytest.approx(-torch.log(p[0]).item(), rel=1e-4)  # road alone, its weight
    # with every pixel kept (min_kept), the weighted mean of the plain losses
    both = SegLoss(weight, ohem_thresh=0.7, ohem_min_kept=2)(logits, target).item()
    nll = -torch.log(p)
    assert both == pytest.approx(((nll * weight).sum() / weight.sum()).item(), rel=1e-4)
    assert both == pytest.approx(torch.nn.functional.cross_entropy(
        logits, target, weight=weight).item(), rel=1e-4)  # = plain weighted CE
