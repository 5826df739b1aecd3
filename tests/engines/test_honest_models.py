"""Models and frames the engine must refuse clearly, or serve: tiny frames, sidecars that
disagree with themselves or with their ONNX graph (checked when the model loads)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engines.backend import create_backend
from engines.postprocess import Postprocessor, upsample_argmax_ref
from engines.segmenter import Segmenter
from engines.spec import CAMVID_CLASSES, ModelSpec, ModelSpecError, sidecar_path

SPEC = ModelSpec("t", "tiny", CAMVID_CLASSES, (64, 96))


@pytest.mark.parametrize("H,W", [(1, 1), (1, 2), (2, 1), (1, 7), (3, 3), (7, 9), (1, 64)])
def test_postprocess_of_tiny_frames_matches_reference(H, W):
    # A 1x1 output used to come out as class 255: OpenCV took the 1x1 array for a scalar.
    for seed in range(5):
        logits = np.random.default_rng(seed).standard_normal((11, 16, 24)).astype(np.float32)
        got = Postprocessor(SPEC)(logits, (H, W))
        assert got.dtype == np.uint8 and got.shape == (H, W)
        assert np.array_equal(got, upsample_argmax_ref(logits, H, W)), (H, W, seed)


@pytest.mark.parametrize("H,W", [(1, 1), (1, 3), (2, 2)])
def test_segmenter_on_tiny_frames_gives_valid_classes(tiny_model, H, W):
    seg = Segmenter.from_path(tiny_model, threads=1)
    frame = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    labels = seg(frame)
    assert labels.shape == (H, W) and labels.max() < seg.spec.num_classes


def _sidecar(model) -> dict:
    return json.loads(sidecar_path(model).read_text())


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d["classes"][2].update(color=[300, 0, 0]), r"class 2 .*color must be 3 integers "
                                                          r"0\.\.255 .*got \[300, 0, 0\]"),
    (lambda d: d["classes"][1].update(color=[10, 20]), r"class 1 .*got \[10, 20\]"),
    (lambda d: d["classes"][0].update(color=[1.5, 0, 0]), "expected an integer, got 1.5"),
    (lambda d: d.update(classes=[{"id": i, "name": f"c{i}", "color": [0, 0, 0]}
                                 for i in range(300)]), "300 classes; at most 256"),
    (lambda d: d.update(ignore_index="void"), "ignore_index must be an integer"),
])
def test_bad_sidecar_values_are_clear_errors(tiny_model, mutate, msg):
    d = _sidecar(tiny_model)
    mutate(d)
    sidecar_path(tiny_model).write_text(json.dumps(d))
    with pytest.raises(ModelSpecError, match=msg) as e:
        create_backend(tiny_model, threads=1)
    assert str(sidecar_path(tiny_model)) in str(e.value)


@pytest.mark.parametrize("mutate,msg", [
    # the sidecar lists 20 classes for a model that outputs 5
    (lambda d: d.update(classes=[{"id": i, "name": f"c{i}", "color": [i, i, i]}
                                 for i in range(20)]),
     "the sidecar lists 20 classes but the graph outputs 5"),
    (lambda d: d.update(input_size=[32, 32]),
     "the sidecar's input_size is 32x32 .* but the graph takes 64x96"),
    (lambda d: d.update(output="labels"), "the sidecar says output 'labels'"),
])
def test_sidecar_disagreeing_with_the_graph_fails_at_load(tiny_model, mutate, msg):
    d = _sidecar(tiny_model)
    mutate(d)
    sidecar_path(tiny_model).write_text(json.dumps(d))
    with pytest.raises(ModelSpecError, match=msg) as e:
        Segmenter.from_path(tiny_model, threads=1)
    assert str(tiny_model) in str(e.value) and "fix the sidecar" in str(e.value)


def test_class_count_of_a_graph_with_dynamic_class_axis_is_checked_at_load(tmp_path):
    import onnx

    from tests.tinymodel import make_tiny_model

    path = make_tiny_model(tmp_path, num_classes=4)
    m = onnx.load(path)
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(m, path)
    create_backend(path, threads=1)  # 4 = 4: fine
    d = _sidecar(path)
    d["classes"] = d["classes"][:3]
    sidecar_path(path).write_text(json.dumps(d))
    with pytest.raises(ModelSpecError, match="lists 3 classes but the graph outputs 4"):
        create_backend(path, threads=1)


def test_shipped_and_argmax_models_still_load(tiny_argmax_model):
    create_backend(tiny_argmax_model, threads=1)
    from engines.zoo import default_model_path

    create_backend(default_model_path(), threads=1)
