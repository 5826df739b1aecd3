"""Training on a tiny synthetic dataset: the loss falls, checkpoints follow the shared
contract, resume reproduces an uninterrupted run exactly, and DDP runs under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.checkpoint import load_checkpoint_model  # noqa: E402
from engines.data.torch_dataset import TrainDataset  # noqa: E402
from engines.train import TrainConfig, WarmupPoly, train  # noqa: E402
from engines.train_runtime import prefetch_depth  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COLORS = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]], np.uint8)  # BGR per class


def make_folder_dataset(root: Path, n: int = 8, size: tuple[int, int] = (32, 48)) -> Path:
    """images/ + masks/ + classes.txt; the class of a pixel is its (noisy) colour."""
    rng = np.random.default_rng(0)
    h, w = size
    for split in ("train", "val"):
        d = root / split
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir()
        (d / "classes.txt").write_text("red\ngreen\nblue\n")
        for i in range(n if split == "train" else 2):
            lbl = np.zeros((h, w), np.uint8)
            for _ in range(3):
                y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
                lbl[y:y + rng.integers(8, h // 2 + 8), x:x + rng.integers(8, w // 2 + 8)] = \
                    rng.integers(0, 3)
            img = COLORS[lbl].astype(np.int16) + rng.integers(-25, 26, (h, w, 3))
            cv2.imwrite(str(d / "images" / f"{i:02d}.png"), np.clip(img, 0, 255).astype(np.uint8))
            cv2.imwrite(str(d / "masks" / f"{i:02d}.png"), lbl)
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("tinyseg"))


def tiny_config(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(
        model="fastscnn", data=str(data), out=str(out), epochs=3, batch_size=4,
        crop=(32, 48), scale=(0.75, 1.25), lr=1e-2, warmup_epochs=0, class_weight="mfb",
        arch_options={"width": 0.25, "aux": True}, val_split=None, threads=1, seed=1,
        name="tiny-fastscnn",
    )
    return replace(base, **kw)


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]


def test_warmup_poly_schedule() -> None:
    f = WarmupPoly(total_steps=10, warmup_steps=2, power=1.0)
    assert [round(f(s), 3) for s in range(10)] == [0.333, 0.667, 1.0, 0.875, 0.75, 0.625,
                                                   0.5, 0.375, 0.25, 0.125]


def test_training_reduces_loss_and_writes_checkpoints(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    best = train(tiny_config(tiny_data, out, epochs=4), progress=False)
    log = _log(out)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"], log
    assert best == out / "best.pt"  # no validation split: the final epoch is "best"
    assert torch.load(best, weights_only=False)["epoch"] == 4
    ckpt = torch.load(out / "last.pt", weights_only=False)
    for key in ("arch", "arch_options", "num_classes", "model", "spec", "epoch", "optimizer",
                "scheduler", "best_miou", "rng"):
        assert key in ckpt, key
    assert ckpt["arch"] == "fastscnn" and ckpt["num_classes"] == 3 and ckpt["epoch"] == 4
    model, spec = load_checkpoint_model(out / "last.pt")
    assert spec.class_names == ["red", "green", "blue"] and spec.input_size == (32, 48)
    assert spec.ignore_index == 255 and spec.architecture == "fastscnn"
    assert not model.training
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 32, 48))
    assert y.shape == (1, 3, 4, 6)  # eval mode: main logits only, at output stride 8
    pytest.importorskip("matplotlib")
    png = cv2.imread(str(out / "curves.png"))  # the run's loss curve, redrawn every epoch
    assert png is not None and png.shape[0] > 100 and not list(out.glob("*.tmp.png"))


@pytest.mark.parametrize(("bf16", "logged"), [("off", "float32"), ("on", "bfloat16")])
def test_log_records_the_autocast_the_run_used(tiny_data: Path, tmp_path: Path, bf16: str,
                                               logged: str) -> None:
    # --bf16 auto resolves per machine; the log says what the epochs actually ran in
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=1, bf16=bf16, ohem=0.7), progress=False)
    assert _log(out)[0]["autocast"] == logged
    _, spec = load_checkpoint_model(out / "last.pt")
    assert spec.training_data.endswith("1 epochs, from scratch, OHEM 0.7")  # the loss too


@pytest.mark.parametrize("flags", [[], ["--no-progress"]])
def test_no_progress_prints_a_line_per_epoch_and_no_bars(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, flags: list[str]) -> None:
    from stream.cli import main

    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # bars on unless the flag says otherwise
    cfg = tiny_config(tiny_data, tmp_path / "run", epochs=2)
    assert main(["train", "--model", cfg.model, "--data", cfg.data, "--out", cfg.out,
                 "--epochs", "2", "--batch-size", "4", "--crop", "32x48", "--threads", "1",
                 "--arch-options", json.dumps(cfg.arch_options), "--val-split", "val",
                 "--val-every", "2", *flags]) == 0
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    bars = not flags
    # one format: validation epochs add their score; without bars every epoch has a line
    assert [ln.split(":")[0] for ln in lines] == (["epoch 2/2"] if bars
                                                  else ["epoch 1/2", "epoch 2/2"]), out
    assert all("img/s" in ln for ln in lines) and "val mIoU" in lines[-1]
    assert ("it/s" in err and "loading" in err) is bars, err


def test_a_mixing_run_trains_and_says_so(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=1, mix="classmix", mix_prob=1.0), progress=False)
    assert np.isfinite(_log(out)[0]["loss"])
    _, spec = load_checkpoint_model(out / "last.pt")
    assert spec.training_data.endswith("from scratch, ClassMix p=1")


def test_validation_picks_best_and_records_metrics(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(tiny_data, out, epochs=2, val_split="val")
    best = train(cfg, progress=False)
    log = _log(out)
    assert all("val_miou" in r and 0.0 <= r["val_miou"] <= 1.0 for r in log)
    assert best == out / "best.pt"
    ckpt = torch.load(best, weights_only=False)
    assert ckpt["best_miou"] == pytest.approx(max(r["val_miou"] for r in log), abs=1e-4)
    metrics = ckpt["spec"]["metrics"]
    assert set(metrics["per_class_iou"]) == {"red", "green", "blue"}
    assert metrics["val_miou"] == pytest.approx(ckpt["best_miou"], abs=1e-4)


def crash_in_epoch_2(cfg: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``cfg`` until a simulated crash as its second epoch starts (epoch 1 saved)."""
    real_set_epoch = TrainDataset.set_epoch

    def crash(self: TrainDataset, epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")
        real_set_epoch(self, epoch)

    monkeypatch.setattr(TrainDataset, "set_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(TrainDataset, "set_epoch", real_set_epoch)


def test_resume_reproduces_uninterrupted_run(tiny_data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    straight = tmp_path / "straight"
    train(tiny_config(tiny_data, straight, epochs=2), progress=False)

    interrupted = tmp_path / "interrupted"
    crash_in_epoch_2(tiny_config(tiny_data, interrupted, epochs=2), monkeypatch)
    assert torch.load(interrupted / "last.pt", weights_only=False)["epoch"] == 1

    train(tiny_config(tiny_data, interrupted, epochs=2, resume=True), progress=False)
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(interrupted / "last.pt", weights_only=False)
    assert b["epoch"] == 2
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)
    assert _log(straight)[-1]["loss"] == _log(interrupted)[-1]["loss"]


def test_stop_after_then_resume_matches_straight_run(tiny_data: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(tiny_data, straight, epochs=2), progress=False)
    train(tiny_config(tiny_data, split, epochs=2, stop_after=1), progress=False)
    assert len(_log(split)) == 1
    train(tiny_config(tiny_data, split, epochs=2, resume=True), progress=False)
    a = torch.load(straight / "last.pt", weights_only=False)["model"]
    b = torch.load(split / "last.pt", weights_only=False)["model"]
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=0, msg=k)


def test_prefetch_thread_gives_the_same_run(tiny_data: Path, tmp_path: Path) -> None:
    """Batches augmented on the prefetch thread: the same weights bit for bit as on the main
    thread (the thread only runs ahead, never reorders)."""
    main_thread, prefetched = tmp_path / "main", tmp_path / "prefetched"
    train(tiny_config(tiny_data, main_thread, epochs=2, prefetch=0), progress=False)
    train(tiny_config(tiny_data, prefetched, epochs=2, prefetch=2), progress=False)
    a = torch.load(main_thread / "last.pt", weights_only=False)["model"]
    b = torch.load(prefetched / "last.pt", weights_only=False)["model"]
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_failing_sample_stops_training_with_its_error(tiny_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        prefetch: int) -> None:
    def broken(self: TrainDataset, i: int) -> None:
        raise OSError(f"sample {i} is unreadable")

    monkeypatch.setattr(TrainDataset, "__getitem__", broken)
    with pytest.raises(OSError, match="unreadable"):
        train(tiny_config(tiny_data, tmp_path / "run", prefetch=prefetch), progress=False)


def test_prefetch_default_uses_a_thread_only_where_a_core_is_spare(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, tmp_path)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert prefetch_depth(cfg, cpu) == 0  # 2 torch threads on 2 cores: no spare core
    assert prefetch_depth(cfg, cuda) == 2  # the GPU does the maths
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert prefetch_depth(cfg, cpu) == 2
    assert prefetch_depth(replace(cfg, prefetch=0), cpu) == 0  # explicit values win
    assert prefetch_depth(replace(cfg, prefetch=3), cpu) == 3
    assert prefetch_depth(replace(cfg, workers=2, prefetch=3), cpu) == 0  # processes do it


def test_resume_short_form_continues_the_runs_own_recipe(tiny_data: Path,
                                                         tmp_path: Path) -> None:
    """`--model M --data D --out RUN --resume` (the help's example) takes the recipe from
    the checkpoint: same weights as the straight run, not the defaults' recipe."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(tiny_data, straight, epochs=2), progress=False)
    train(tiny_config(tiny_data, split, epochs=2, stop_after=1), progress=False)
    short = TrainConfig(model="fastscnn", data=str(tiny_data), out=str(split), resume=True,
                        threads=1)
    train(short, progress=False)
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(split / "last.pt", weights_only=False)
    assert b["epoch"] == 2 and b["config"]["lr"] == 1e-2 and b["config"]["epochs"] == 2
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)


def test_resume_refuses_another_recipe_and_changes_nothing(tiny_data: Path,
                                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(tiny_data, run, epochs=2, stop_after=1), progress=False)
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"--crop \(16, 16\) \(the run has \(32, 48\)\); "
                       r"--lr 0\.5 \(the run has 0\.01\)"):
        train(tiny_config(tiny_data, run, epochs=2, resume=True, lr=0.5, crop=(16, 16)),
              progress=False)
    assert (run / "last.pt").read_bytes() == before and len(_log(run)) == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"model": "nosuch"}, "unknown model 'nosuch'; valid"),
    ({"arch_options": {"auxx": True}}, r"--arch-options .*auxx.* do not fit 'fastscnn'"),
    ({"crop": (0, 48)}, "crop must be"),
    ({"crop": (10000, 10000)}, r"--crop 10000x10000 is larger than any training frame even "
                               r"at the largest --scale \(1\.25: \d+x\d+\)"),
    ({"batch_size": 64}, "batch size 64 is larger"),
    # val's frames are inside train+val (same names and pixels; plain train and val share
    # names 00, 01 with other pixels, which is fine: see the val_split="val" tests)
    ({"train_split": "train+val", "val_split": "val"},
     r"--val-split 'val' shares 2 of its 2 frames with --train-split 'train\+val'"),
])
def test_bad_training_input_leaves_no_run_folder(tiny_data: Path, tmp_path: Path,
                                                 change: dict, message: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tiny_data, out, **change), progress=False)
    assert not out.exists()


def test_resume_without_checkpoint_is_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*last\.pt"):
        train(tiny_config(tiny_data, tmp_path / "new", resume=True), progress=False)


def test_bad_config_values() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(model="fastscnn", data=".", out=".", optimizer="lbfgs")
    with pytest.raises(ValueError, match="class_weight"):
        TrainConfig(model="fastscnn", data=".", out=".", class_weight="inverse")
    with pytest.raises(ValueError, match="prefetch"):
        TrainConfig(model="fastscnn", data=".", out=".", prefetch=-1)
    with pytest.raises(ValueError, match="val_every"):
        TrainConfig(model="fastscnn", data=".", out=".", val_every=0)
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(model="fastscnn", data=".", out=".", threads=-1)


def test_cli_help_and_errors(tiny_data: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from stream.commands import train as train_cmd

    parser = argparse.ArgumentParser(prog="segstream")
    train_cmd.register(parser.add_subparsers())
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["train", "--help"])
    assert e.value.code == 0
    assert "segstream train --model fastscnn" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model", "fastscnn", "--data", ".", "--out", "x",
                           "--crop", "360by480"])
    assert "--crop must be HxW" in capsys.readouterr().err
    args = parser.parse_args(["train", "--model", "fastscnn", "--data",
                              str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert args.func(args) == 2
    assert "not found" in capsys.readouterr().err


def test_ddp_under_torchrun(tiny_data: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo): DistributedSampler splits the data, rank 0 checkpoints."""
    out = tmp_path / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port),
           "-m", "engines.train", "--model", "fastscnn", "--data", str(tiny_data),
           "--out", str(out), "--epochs", "1", "--batch-size", "2",
           "--crop", "32x48", "--val-split", "", "--threads", "1",
           "--arch-options", '{"width": 0.25}']
    proc = subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = _log(out)
    assert len(log) == 1  # one writer: rank 0
    # 8 images over 2 ranks with batch 2: 2 steps per rank per epoch.
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["scheduler"]["last_epoch"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    # every rank's RNG is kept (each resumes its own dropout draws, not rank 0's)
    ranks = ckpt["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    assert torch.equal(ranks[0]["torch"], ckpt["rng"]["torch"])  # no validation between
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        cmd[cmd.index("--master_port") + 1] = str(s.getsockname()[1])
    cmd[cmd.index("--epochs") + 1] = "2"
    proc = subprocess.run([*cmd, "--resume"], check=False, env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["epoch"] for r in _log(out)] == [1, 2]


def test_fastscnn_shapes_and_export_friendliness() -> None:
    from engines.registry import build_model

    model = build_model("fastscnn", 11).eval()
    params = sum(p.numel() for p in model.parameters())
    assert 0.9e6 < params < 1.5e6, params
    assert model.output_stride == 8
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 360, 480)).shape == (1, 11, 45, 60)
        # Sizes not divisible by 32 work (fixed-kernel pooling, size-driven upsampling).
        assert model(torch.zeros(1, 3, 100, 130)).shape == (1, 11, 13, 17)
    up = build_model("fastscnn", 5, upsample=True, width=0.5).eval()
    assert up.output_stride == 1
    with torch.no_grad():
        assert up(torch.zeros(2, 3, 64, 96)).shape == (2, 5, 64, 96)
    aux = build_model("fastscnn", 5, aux=True).train()
    outs = aux(torch.zeros(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 5, 8, 12), (2, 5, 8, 12), (2, 5, 2, 3)]


def test_qat_fine_tune_starts_from_the_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    train(tiny_config(tiny_data, base, epochs=4), progress=False)
    qat = tmp_path / "qat"
    train(tiny_config(tiny_data, qat, epochs=1, lr=1e-3, init_from=str(base / "last.pt"),
                      qat=True), progress=False)
    scratch = tmp_path / "scratch"
    train(tiny_config(tiny_data, scratch, epochs=1, qat=True), progress=False)
    # Fine-tuning starts where the base run ended, far below a run from scratch.
    assert _log(qat)[0]["loss"] < 0.8 * _log(scratch)[0]["loss"]
    ckpt = torch.load(qat / "last.pt", weights_only=False)
    assert ckpt["config"]["qat"] is True and ckpt["config"]["init_from"].endswith("last.pt")
    model, _ = load_checkpoint_model(qat / "last.pt")  # a plain float checkpoint
    assert not any(hasattr(m, "_segstream_act_range") for m in model.modules())


def test_init_from_must_match_the_architecture(tiny_data: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    train(tiny_config(tiny_data, base, epochs=1), progress=False)
    with pytest.raises(ValueError, match="--arch-options"):
        train(tiny_config(tiny_data, tmp_path / "x", epochs=1, init_from=str(base / "last.pt"),
                          arch_options={"width": 0.5, "aux": True}), progress=False)
    with pytest.raises(FileNotFoundError, match="--init-from"):
        train(tiny_config(tiny_data, tmp_path / "y", init_from=str(tmp_path / "no.pt")),
              progress=False)


class _Planted:
    """Pickles to a call of ``os.system``: loading it with plain pickle would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("flag", ["resume", "init_from"])
def test_checkpoints_are_read_without_running_pickled_code(tiny_data: Path, tmp_path: Path,
                                                           flag: str) -> None:
    """--resume and --init-from read a checkpoint from anywhere: a planted object in it is
    refused, not executed (weights_only loading)."""
    import torch

    base = tmp_path / "base"
    train(tiny_config(tiny_data, base, epochs=1), progress=False)
    ckpt = torch.load(base / "last.pt", weights_only=False)
    marker = tmp_path / "ran"
    ckpt["config"]["note"] = _Planted(marker)
    torch.save(ckpt, base / "last.pt")
    kw = {"resume": True} if flag == "resume" else {"init_from": str(base / "last.pt")}
    out = base if flag == "resume" else tmp_path / "new"
    with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')}: cannot read checkpoint"):
        train(tiny_config(tiny_data, out, epochs=2, **kw), progress=False)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint_model(base / "last.pt")
    assert not marker.exists()


def test_a_diverging_loss_ends_with_a_message_not_a_traceback(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from stream.commands import train as train_cmd

    parser = argparse.ArgumentParser(prog="segstream")
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--model", "fastscnn", "--data", str(tiny_data),
                              "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size",
                              "4", "--crop", "32x48", "--lr", "1e30", "--warmup-epochs", "0",
                              "--arch-options", '{"width": 0.25}', "--threads", "1",
                              "--val-split", ""])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "segstream train: error: loss became" in err and "lower --lr" in err
    assert "No checkpoint was written yet" in err  # it named a last.pt that did not exist


@pytest.mark.parametrize("flag, value, why", [
    ("--lr", "nan", "lr must be positive"), ("--ohem", "5", "ohem must be a probability"),
    ("--warmup-epochs", "-1", "warmup_epochs must be a number >= 0"),
    ("--aux-weight", "nan", "aux_weight must be a number >= 0"),
    ("--weight-decay", "nan", "weight_decay must be a number >= 0")])
def test_bad_recipe_numbers_exit_2_before_the_run_folder_is_made(tmp_path, capsys, flag, value,
                                                                 why):
    from stream.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "fastscnn", "--data", str(tmp_path), "--out", str(out),
                 flag, value]) == 2
    assert why in capsys.readouterr().err and not out.exists()


def test_resume_with_a_new_length_retargets_every_parameter_group(tiny_data: Path,
                                                                  tmp_path: Path) -> None:
    """A model with an encoder trains two parameter groups; resuming with more epochs
    must move both schedules to the new end (the encoder's stayed at the old one: LR 0
    for every added epoch)."""
    import torch

    run = tmp_path / "run"
    cfg = tiny_config(tiny_data, run, model="fpn", epochs=1, encoder_lr_mult=0.5,
                      arch_options={"encoder": "mobilenetv2", "width": 0.25})
    train(cfg, progress=False)
    train(replace(cfg, epochs=3, resume=True, stop_after=2), progress=False)
    groups = torch.load(run / "last.pt", weights_only=False)["optimizer"]["param_groups"]
    # after 2 of 3 epochs, neither group is at its end (0) and the ratio holds
    assert len(groups) == 2 and groups[0]["lr"] > 0
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.5, rel=1e-6)
