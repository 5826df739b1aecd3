"""Knowledge distillation (``engines.distill``, ``segstream train --distill``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.spec import ClassInfo, ModelSpec
from engines.train_config import TrainConfig, resumed_config
from tests.tinymodel import make_tiny_model

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from engines.checkpoint import load_checkpoint_model  # noqa: E402
from engines.data.torch_dataset import to_tensor  # noqa: E402
from engines.distill import Teacher, TeacherError, distill_loss  # noqa: E402
from engines.train import train  # noqa: E402
from tests.engines.test_train import make_folder_dataset, tiny_config  # noqa: E402


def _kl(p_t: np.ndarray, p_s: np.ndarray) -> float:
    return float((p_t * np.log(p_t / p_s)).sum())


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distill_loss_is_the_pixel_kl_at_temperature_times_its_square(temperature: float):
    student = torch.zeros(1, 2, 1, 1, requires_grad=True)
    teacher = torch.tensor([np.log(3.0), 0.0]).view(1, 2, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.int64)
    loss = distill_loss(student, teacher, target, temperature)
    want = _kl(_softmax(np.array([np.log(3.0), 0.0]) / temperature), np.array([0.5, 0.5]))
    assert loss.item() == pytest.approx(want * temperature ** 2, rel=1e-5)
    loss.backward()
    assert student.grad.abs().sum() > 0  # only the student learns


def test_distill_loss_ignores_void_and_padding_and_resizes_the_student():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 4, 8, 12, generator=g)
    target = torch.randint(0, 4, (2, 32, 48), generator=g)
    # the same distribution: nothing to learn
    assert distill_loss(teacher.clone(), teacher, target).item() == pytest.approx(0, abs=1e-6)
    # teacher and student disagree only where the label is void: nothing either
    other = teacher.clone()
    other[:, :, :4] = -other[:, :, :4]
    target[:, :16] = 255
    assert distill_loss(other, teacher, target).item() == pytest.approx(0, abs=1e-6)
    target[:, 16:] = 255
    empty = distill_loss(other.requires_grad_(), teacher, target)
    assert empty.item() == 0 and empty.requires_grad
    # a student at half the teacher's resolution is upsampled (bilinearly) to it
    small = torch.randn(2, 4, 4, 6, generator=g)
    target[:] = 0
    up = torch.nn.functional.interpolate(small, size=(8, 12), mode="bilinear",
                                         align_corners=False)
    assert distill_loss(small, teacher, target).item() == pytest.approx(
        distill_loss(up, teacher, target).item(), rel=1e-6)
    assert distill_loss(small, teacher, target).item() > 0


def test_distill_loss_balanced_counts_a_pixel_by_its_class_weight():
    # two pixels: the student is wrong only on the rare class (label 1), right on the other
    teacher = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])  # (1, 2, 1, 2)
    student = torch.tensor([[[[4.0, 4.0]], [[-4.0, -4.0]]]])  # calls both pixels class 0
    target = torch.tensor([[[0, 1]]])  # (1, 1, 2)
    plain = distill_loss(student, teacher, target)
    kl_rare = _kl(_softmax(np.array([-4.0, 4.0])), _softmax(np.array([4.0, -4.0])))
    weights = torch.tensor([1.0, 9.0])
    balanced = distill_loss(student, teacher, target, class_weight=weights)
    assert plain.item() == pytest.approx(kl_rare / 2, rel=1e-5)  # the mean of (0, kl)
    assert balanced.item() == pytest.approx(kl_rare * 9 / 10, rel=1e-5)  # (1*0 + 9*kl) / 10
    # equal weights are the plain mean; void pixels carry no weight (and index none)
    assert distill_loss(student, teacher, target, class_weight=torch.tensor([3.0, 3.0])
                        ).item() == pytest.approx(plain.item(), rel=1e-6)
    void = torch.tensor([[[255, 1]]])
    assert distill_loss(student, teacher, void, class_weight=weights).item() == pytest.approx(
        kl_rare, rel=1e-5)


def _write_teacher(path: Path, names: list[str], bias: list[float], size=(32, 48),
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> Path:
    """A teacher whose logits are ``bias`` everywhere (a 1x1 conv of zeros, stride 4)."""
    k = len(names)
    w = numpy_helper.from_array(np.zeros((k, 3, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.asarray(bias, np.float32), "b")
    node = helper.make_node("Conv", ["input", "w", "b"], ["logits"], strides=[4, 4],
                            kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node], "const", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                        [1, 3, *size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       [1, k, size[0] // 4, size[1] // 4])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    ModelSpec(name="const", architecture="const",
              classes=tuple(ClassInfo(i, n, (i, i, i)) for i, n in enumerate(names)),
              input_size=size, output="logits", training_data="test", mean=mean,
              std=std).save(path.with_suffix(".json"))
    return path


def test_teacher_renormalises_student_batches_for_its_own_input(tmp_path: Path):
    path = make_tiny_model(tmp_path, num_classes=3, input_size=(32, 48))
    spec = ModelSpec.load(path.with_suffix(".json"))
    t_mean, t_std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not the student's (ImageNet)
    data = spec.to_json() | {"mean": list(t_mean), "std": list(t_std)}
    path.with_suffix(".json").write_text(json.dumps(data))
    s_mean, s_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    teacher = Teacher(path, spec.class_names, s_mean, s_std, batch=3, threads=1)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)  # RGB frames
    x = torch.stack([to_tensor(im, s_mean, s_std) for im in raw])  # (3, 3, 32, 48)
    got = teacher(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for i, im in enumerate(raw):
        xt = to_tensor(im, t_mean, t_std)[None].numpy()
        want = sess.run(None, {"input": xt})[0]
        np.testing.assert_allclose(got[i:i + 1].numpy(), want, rtol=1e-4, atol=1e-4)
    # a crop of another size is resized to the teacher's input first
    assert teacher(x[:, :, :16, :24]).shape == (3, 3, 8, 12)
    # ... keeping its aspect: a square crop fills the left 32x32 of the 32x48 input, the
    # rest is the teacher's mean colour (0 once normalised for it), and only the logits
    # of the crop's area come back
    square = teacher(x[:, :, :, :32])
    assert square.shape == (3, 3, 8, 8)
    for i, im in enumerate(raw):
        xt = to_tensor(im[:, :32], t_mean, t_std)[None].numpy()  # (1, 3, 32, 32)
        padded = np.pad(xt, ((0, 0), (0, 0), (0, 0), (0, 16)))
        want = sess.run(None, {"input": padded})[0][..., :8]
        np.testing.assert_allclose(square[i:i + 1].numpy(), want, rtol=1e-4, atol=1e-4)
    teacher.close()


def test_teacher_refuses_what_cannot_teach_naming_the_file(tmp_path: Path):
    names = ["red", "green", "blue"]
    mean, std = (0.5,) * 3, (0.25,) * 3
    with pytest.raises(TeacherError, match="no such ONNX file"):
        Teacher(tmp_path / "nope.onnx", names, mean, std)
    bare = _write_teacher(tmp_path / "bare.onnx", names, [0, 0, 1])
    bare.with_suffix(".json").unlink()
    with pytest.raises(TeacherError, match=r"sidecar .*bare\.json not found"):
        Teacher(bare, names, mean, std)
    other = _write_teacher(tmp_path / "other.onnx", ["sky", "road", "car"], [0, 0, 1])
    with pytest.raises(TeacherError, match=r"other\.onnx has the classes .*'sky'"):
        Teacher(other, names, mean, std)
    labels = make_tiny_model(tmp_path / "lab", num_classes=3, argmax=True)
    with pytest.raises(TeacherError, match="outputs 'labels'"):
        Teacher(labels, ["class0", "class1", "class2"], mean, std)


def test_distillation_pulls_the_student_towards_the_teacher(tmp_path: Path):
    """A teacher that says "blue" everywhere, with a large weight, must make the student
    call more of the frames blue than the same run without it."""
    data = make_folder_dataset(tmp_path / "data")
    teacher = _write_teacher(tmp_path / "blue.onnx", ["red", "green", "blue"], [0, 0, 6])
    blue, kd_loss = {}, {}
    kd = {"distill": str(teacher), "distill_weight": 5.0}
    for name, kw in (("plain", {}), ("kd", kd), ("balanced", {**kd, "distill_balanced": True})):
        out = tmp_path / name
        train(tiny_config(data, out, epochs=3, **kw), progress=False)
        log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
        assert ("distill_loss" in log[-1]) == bool(kw)
        model, spec = load_checkpoint_model(out / "last.pt")
        frames = [cv2.imread(str(p))[..., ::-1] for p in sorted((data / "train" / "images")
                                                                 .glob("*.png"))]
        x = torch.stack([to_tensor(f, spec.mean, spec.std) for f in frames])
        with torch.no_grad():
            blue[name] = float((model(x).argmax(1) == 2).float().mean())
        if kw:
            tail = ", class-weighted)" if name == "balanced" else ")"
            assert "distilled from blue.onnx (weight 5, T 1" + tail in spec.training_data
            assert log[-1]["distill_loss"] < log[0]["distill_loss"]
            kd_loss[name] = [r["distill_loss"] for r in log]
    assert blue["kd"] > blue["plain"] + 0.1, blue
    assert blue["balanced"] > blue["plain"] + 0.1, blue
    assert kd_loss["balanced"] != kd_loss["kd"]  # train passed the class weights on


def test_a_teacher_that_cannot_teach_fails_before_anything_is_written(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data")
    other = _write_teacher(tmp_path / "other.onnx", ["sky", "road", "car"], [0, 0, 1])
    with pytest.raises(TeacherError, match="a teacher must label the same classes"):
        train(tiny_config(data, tmp_path / "run", epochs=1, distill=str(other)),
              progress=False)
    assert not (tmp_path / "run").exists()


def test_distillation_is_part_of_the_recipe_a_resume_keeps(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    teacher = str(tmp_path / "t.onnx")
    run = TrainConfig(model="m", data="d", out="o", distill=teacher, distill_weight=2.0)
    given = TrainConfig(model="m", data="d", out="o", resume=True)
    resumed = resumed_config(given, asdict(run))
    assert (resumed.distill, resumed.distill_weight) == (teacher, 2.0)
    monkeypatch.chdir(tmp_path)  # the same teacher given relative to here: the same recipe
    assert resumed_config(TrainConfig(model="m", data="d", out="o", resume=True,
                                      distill="t.onnx"), asdict(run)).distill == teacher
    with pytest.raises(ValueError, match=r"--distill 'u\.onnx'"):
        resumed_config(TrainConfig(model="m", data="d", out="o", resume=True,
                                   distill="u.onnx"), asdict(run))
    with pytest.raises(ValueError, match="needs the teacher model's path"):
        TrainConfig(model="m", data="d", out="o", distill=" ")
    with pytest.raises(ValueError, match=r"--distill-weight 3\.0"):
        resumed_config(TrainConfig(model="m", data="d", out="o", resume=True, distill=teacher,
                                   distill_weight=3.0), asdict(run))
    with pytest.raises(ValueError, match="without --distill"):
        TrainConfig(model="m", data="d", out="o", distill_weight=2.0)
    with pytest.raises(ValueError, match="distill_temperature must be a number > 0"):
        TrainConfig(model="m", data="d", out="o", distill="t.onnx", distill_temperature=0)
    with pytest.raises(ValueError, match=r"^--distill-balanced given without --distill"):
        TrainConfig(model="m", data="d", out="o", distill_balanced=True)
    with pytest.raises(ValueError, match="--class-weight, which is none"):
        TrainConfig(model="m", data="d", out="o", distill="t.onnx", distill_balanced=True,
                    class_weight="none")
    # a run from before --distill-balanced trained without it, and resumes so
    older = {k: v for k, v in asdict(run).items() if k != "distill_balanced"}
    assert not resumed_config(given, older).distill_balanced
    balanced = asdict(TrainConfig(model="m", data="d", out="o", distill=teacher,
                                  distill_balanced=True))
    assert resumed_config(given, balanced).distill_balanced  # the short form keeps it
    with pytest.raises(ValueError, match="--distill-balanced True"):
        resumed_config(TrainConfig(model="m", data="d", out="o", resume=True, distill=teacher,
                                   distill_balanced=True), older)
