"""Torch reference backend: checkpoint loading, parity with ONNX Runtime on the same
weights, spec resolution through create_backend, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engines.backend import BackendError, create_backend
from engines.export import export_onnx
from engines.registry import build_model
from engines.spec import ClassInfo, ModelSpec, sidecar_path
from engines.torch_backend import TorchBackend

K = 7
ARCH, OPTS = "ddrnet23-slim", {"width": 0.25}
SPEC = ModelSpec("parity", ARCH, tuple(ClassInfo(i, f"c{i}", (0, i, 0)) for i in range(K)),
                 (64, 96), training_data="random weights, 0 steps")


class NotAllowed:
    """An arbitrary class: unpickling it would run code, so loading must refuse."""


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = build_model(ARCH, K, **OPTS).eval()
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m


def _save(path, model, **extra) -> str:
    ckpt = {"arch": ARCH, "arch_options": OPTS, "num_classes": K, "model": model.state_dict(),
            "spec": SPEC.to_json(), "epoch": 0,
            "rng": {"numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
    ckpt.update(extra)
    torch.save(ckpt, path)
    return str(path)


@pytest.fixture
def ckpt(tmp_path, model) -> str:
    return _save(tmp_path / "best.pt", model)


def _batch(n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 96), dtype=np.float32)


@pytest.mark.parametrize("output", ["logits", "labels"])
def test_parity_with_onnxruntime(model, ckpt, tmp_path, output):
    spec = ModelSpec.from_json({**SPEC.to_json(), "output": output})
    onnx_path = export_onnx(model, spec, tmp_path / "m.onnx", dynamic=True,
                            argmax=output == "labels")
    ref = create_backend(ckpt, spec=spec)  # torch, by suffix
    ort_be = create_backend(onnx_path)
    assert ref.name == "torch" and ort_be.name == "onnxruntime"
    assert ref.input_shape == (1, 3, 64, 96) and ref.input_dtype == np.float32
    x = _batch()
    a, b = ref.infer(x), ort_be.infer(x)
    assert a.shape == b.shape
    if output == "logits":
        assert a.dtype == np.float32 and a.shape == (2, K, 8, 12)
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max())
        a, b = a.argmax(1), b.argmax(1)
    else:
        assert a.dtype == b.dtype == np.uint8 and a.shape == (2, 64, 96)
    assert (a == b).mean() >= 0.999
    ref.close()
    with pytest.raises(BackendError, match="after close"):
        ref.infer(x)


def test_spec_from_checkpoint_or_sidecar(ckpt):
    be = create_backend(ckpt)  # no sidecar: the checkpoint's own spec
    assert be.spec == SPEC
    other = ModelSpec.from_json({**SPEC.to_json(), "name": "renamed", "output": "labels"})
    other.save(sidecar_path(ckpt))
    be = create_backend(ckpt)
    assert be.spec.name == "renamed"
    assert be.infer(_batch(1)).shape == (1, 64, 96)


def test_checkpoint_errors(model, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(BackendError, match="not a segstream training checkpoint"):
        TorchBackend(bare)
    wrong = _save(tmp_path / "wrong.pt", model, arch_options={"width": 0.5})
    with pytest.raises(BackendError, match="weights do not fit architecture"):
        TorchBackend(wrong)
    unknown = _save(tmp_path / "unknown.pt", model, arch="hrnet-w48")
    with pytest.raises(BackendError, match="valid models"):
        TorchBackend(unknown)
    pickled = _save(tmp_path / "pickled.pt", model, extra=NotAllowed())
    with pytest.raises(BackendError, match="cannot read checkpoint"):
        TorchBackend(pickled)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BackendError, match="not a torch checkpoint") as err:
        TorchBackend(junk)
    assert "weights_only" not in str(err.value)  # no advice to load it unsafely
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(BackendError, match="empty or cut short"):
        TorchBackend(empty)
    with pytest.raises(BackendError, match=r"no checkpoint .*missing\.pt: give the last\.pt"):
        TorchBackend(tmp_path / "missing.pt")
    nospec = tmp_path / "nospec.pt"
    torch.save({"arch": ARCH, "arch_options": OPTS, "num_classes": K,
                "model": model.state_dict()}, nospec)
    with pytest.raises(BackendError, match="no 'spec' entry"):
        create_backend(nospec)
    with pytest.raises(BackendError, match=r"not m\.onnx"):
        TorchBackend(tmp_path / "m.onnx", SPEC)
    three = ModelSpec("x", ARCH, SPEC.classes[:3], (64, 96))
    with pytest.raises(BackendError, match="checkpoint has 7 classes, the sidecar 3"):
        TorchBackend(_save(tmp_path / "ok.pt", model), three)
    be = TorchBackend(_save(tmp_path / "ok2.pt", model))
    with pytest.raises(BackendError, match=r"expected a \(N, 3, H, W\) batch"):
        be.infer(np.zeros((3, 64, 96), np.float32))


def test_checkpoint_trained_with_aux_heads_runs_and_exports(tmp_path):
    torch.manual_seed(0)
    m = build_model(ARCH, K, aux=True, **OPTS)
    assert any(k.startswith("aux_heads.") for k in m.state_dict())
    path = tmp_path / "aux.pt"
    torch.save({"arch": ARCH, "arch_options": {**OPTS, "aux": True}, "num_classes": K,
                "model": m.state_dict(), "spec": SPEC.to_json()}, path)
    be = TorchBackend(path)
    logits = be.infer(_batch(1))
    assert logits.shape == (1, K, 8, 12)  # eval mode: main logits only
    onnx_path = export_onnx(m, SPEC, tmp_path / "aux.onnx")
    ort_out = create_backend(onnx_path).infer(_batch(1))
    assert np.abs(ort_out - logits).max() <= 1e-4 * max(1.0, np.abs(logits).max())
    assert m.training  # export restores the caller's mode



@pytest.mark.parametrize("numpy_module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_checkpoints_with_numpy_state_load_whichever_numpy_wrote_them(tmp_path, numpy_module,
                                                                      monkeypatch):
    """Training checkpoints hold numpy arrays (the RNG state); their pickles name numpy's
    module as the writing numpy did (numpy.core under 1.x): both must load."""
    import warnings
    import zipfile

    from engines.torch_backend import load_checkpoint

    try:
        reconstruct = np._core.multiarray._reconstruct
    except AttributeError:  # pragma: no cover - numpy 1.x
        reconstruct = np.core.multiarray._reconstruct
    state = np.random.get_state()
    path = tmp_path / "rng.pt"
    monkeypatch.setattr(reconstruct, "__module__", numpy_module)  # the name pickle writes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core is deprecated
        torch.save({"arch": ARCH, "num_classes": K, "model": {}, "rng": {"numpy": state}},
                   path)
    monkeypatch.undo()
    with zipfile.ZipFile(path) as z:
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert numpy_module.encode() in pickled
    loaded = load_checkpoint(path)["rng"]["numpy"]
    assert loaded[0] == "MT19937" and np.array_equal(loaded[1], state[1])
