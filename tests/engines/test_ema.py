"""``--ema``: the moving average of the weights, hand-checked; a run keeps it beside the
trained weights, validates and deploys it, and resumes it exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.checkpoint import load_checkpoint_model  # noqa: E402
from engines.data.readers import open_split  # noqa: E402
from engines.ema import ModelEMA, deployed_state  # noqa: E402
from engines.registry import build_model  # noqa: E402
from engines.torch_backend import build_from_checkpoint  # noqa: E402
from engines.train import TrainConfig, evaluate_torch, train  # noqa: E402
from tests.engines.test_train import (  # noqa: E402
    crash_in_epoch_2,
    make_folder_dataset,
    tiny_config,
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("tinyseg_ema"))


def test_average_follows_the_formula_with_warm_up() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = ModelEMA(net, decay=0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    expected = {k: v.clone().double() for k, v in start.items() if v.is_floating_point()}
    for n in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * (n + 1))
            net[1].running_mean.add_(1.0)
            net[1].num_batches_tracked.add_(1)
        d = min(0.9, (1 + n) / (10 + n))  # the warm-up: 0.1, 0.18, ... then 0.9
        assert ema.current_decay() == pytest.approx(d)
        ema.update(net)
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v.double()
    avg = ema.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(avg[k].double(), v, rtol=1e-5, atol=1e-5, msg=k)
    assert int(avg["1.num_batches_tracked"]) == 30  # integers are copied, not averaged
    assert not torch.equal(avg["0.weight"], net.state_dict()["0.weight"])  # it lags
    assert all(not p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_decay_outside_the_open_interval_is_refused(decay: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ema must be a decay in"):
        TrainConfig(model="fastscnn", data=str(tmp_path), out=str(tmp_path / "r"), ema=decay)
    with pytest.raises(ValueError, match="EMA decay must be in"):
        ModelEMA(torch.nn.Linear(1, 1), decay)


def test_a_run_keeps_validates_and_deploys_the_average(tiny_data: Path, tmp_path: Path) -> None:
    out, plain = tmp_path / "run", tmp_path / "plain"
    train(tiny_config(tiny_data, out, epochs=2, val_split="val", ema=0.9), progress=False)
    train(tiny_config(tiny_data, plain, epochs=2, val_split="val"), progress=False)
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert all({"val_miou", "val_miou_trained"} <= r.keys() for r in log)
    ckpt = torch.load(out / "last.pt", weights_only=False)
    steps = 2 * (8 // 4)  # 2 epochs of 8 frames in batches of 4
    assert ckpt["ema_updates"] == steps
    assert "EMA weights (decay 0.9)" in ckpt["spec"]["training_data"]
    differ = [k for k, v in ckpt["model"].items()
              if v.is_floating_point() and not torch.equal(v, ckpt["ema"][k])]
    assert differ  # the average is not the trained weights
    # the trained weights are those of the same run without --ema, bit for bit
    for k, v in torch.load(plain / "last.pt", weights_only=False)["model"].items():
        torch.testing.assert_close(ckpt["model"][k], v, rtol=0, atol=0, msg=k)

    # what export, eval and predict load (the torch backend) and --init-from: the average
    backend_model = build_from_checkpoint(ckpt, "last.pt")
    for k, v in backend_model.state_dict().items():
        torch.testing.assert_close(v, ckpt["ema"][k], rtol=0, atol=0, msg=k)
    model, spec = load_checkpoint_model(out / "last.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ckpt["ema"][k], rtol=0, atol=0, msg=k)
    tuned = tmp_path / "tuned"
    train(tiny_config(tiny_data, tuned, epochs=1, init_from=str(out / "last.pt"),
                      max_steps_per_epoch=1, lr=1e-9), progress=False)
    start = torch.load(tuned / "last.pt", weights_only=False)["model"]
    params = {n for n, _ in model.named_parameters()}  # (BN statistics move in a step)
    assert params & set(differ)
    for k in params & set(differ):  # one step at lr 1e-9 from the average stays there
        torch.testing.assert_close(start[k], ckpt["ema"][k], rtol=1e-4, atol=1e-6, msg=k)

    # the logged scores are those of the average and of the trained weights
    val = open_split(str(tiny_data), "val", "auto")
    assert log[-1]["val_miou"] == pytest.approx(
        evaluate_torch(model, val, spec, torch.device("cpu")).miou, abs=1e-4)
    trained = build_model(ckpt["arch"], ckpt["num_classes"], **ckpt["arch_options"])
    trained.load_state_dict(ckpt["model"])
    assert log[-1]["val_miou_trained"] == pytest.approx(
        evaluate_torch(trained, val, spec, torch.device("cpu")).miou, abs=1e-4)
    best = torch.load(out / "best.pt", weights_only=False)
    assert best["best_miou"] == pytest.approx(max(r["val_miou"] for r in log), abs=1e-4)


def test_without_ema_the_trained_weights_are_deployed(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=1, val_split="val"), progress=False)
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["ema"] is None and deployed_state(ckpt) is ckpt["model"]
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert "val_miou" in log and "val_miou_trained" not in log


def test_resume_restores_the_average_exactly(tiny_data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(tiny_config(tiny_data, straight, epochs=2, ema=0.9, val_split="val"), progress=False)
    crash_in_epoch_2(tiny_config(tiny_data, interrupted, epochs=2, ema=0.9, val_split="val"),
                     monkeypatch)
    # the short form: --ema comes from the run's checkpoint
    train(tiny_config(tiny_data, interrupted, epochs=2, resume=True, val_split="val"),
          progress=False)
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(interrupted / "last.pt", weights_only=False)
    assert a["ema_updates"] == b["ema_updates"] == 4
    for k, v in a["ema"].items():
        torch.testing.assert_close(b["ema"][k], v, rtol=0, atol=0, msg=k)
    assert a["best_miou"] > 0 and np.isclose(a["best_miou"], b["best_miou"])


def test_ema_with_qat_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--ema with --qat is not supported"):
        TrainConfig(model="fastscnn", data=str(tmp_path), out=str(tmp_path / "r"), ema=0.99,
                    qat=True)


def test_cli_flag_reaches_the_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from stream.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "fastscnn", "--data", str(tmp_path), "--out", str(out),
                 "--ema", "1"]) == 2
    assert "ema must be a decay in (0, 1)" in capsys.readouterr().err and not out.exists()
