"""Knowledge distillation: a trained model's soft predictions as a second training target.

``segstream train --distill TEACHER.onnx`` runs the teacher (any segstream ONNX model that
outputs logits over the same classes, e.g. the ImageNet-pretrained litefpn) through ONNX
Runtime on every training batch, and adds the pixel-wise KL divergence from its class
distribution to the student's (Hinton et al. 2015; per pixel for segmentation as in Liu
et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019) to the
cross-entropy:

    loss = CE(student, labels) + weight * T^2 * mean_pixels KL(softmax(t / T) || softmax(s / T))

The teacher is inference only (ONNX Runtime: its weights never change, and any exported
model can teach; its sidecar gives its input size and normalisation), on the CPU, or on
CUDA beside a CUDA student where onnxruntime-gpu is installed. The teacher sees each crop
scaled to fit its own input size with the aspect kept and padded with its mean colour;
only its logits over the crop's area are used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.spec import ModelSpec, sidecar_path


class TeacherError(ValueError):
    """The teacher model cannot teach this run; the message names the file and the fix."""


def teacher_spec(model_path: str | Path) -> ModelSpec:
    """The sidecar of a would-be teacher, checked as far as it can be without the data:
    an ONNX file, its sidecar beside it, logits out.

    Raises:
        TeacherError: it is not (the message says what to give instead).
    """
    from engines.spec import ModelSpecError

    path = Path(model_path)
    if not path.is_file() or path.suffix != ".onnx":
        raise TeacherError(f"--distill {path}: no such ONNX file (give a model exported "
                           "with `segstream export`, e.g. engines/models/camvid_litefpn.onnx)")
    try:
        spec = ModelSpec.load(sidecar_path(path))
    except ModelSpecError as e:
        raise TeacherError(f"--distill {path}: {e}") from e
    if spec.output != "logits":
        raise TeacherError(f"--distill {path} outputs {spec.output!r}; a teacher must "
                           "output logits (class scores), not labels")
    return spec


class Teacher:
    """A segstream ONNX model (with its sidecar) run on student batches.

    Args:
        model_path: the teacher's ``.onnx``; ``model.json`` beside it.
        class_names: the training data's classes, in id order: the teacher's must be the
            same.
        mean, std: the student's input normalisation (RGB, 0..1 scale, as in
            :class:`~engines.spec.ModelSpec`); batches come normalised this way and are
            re-normalised for the teacher.
        batch: images per teacher call (a fixed-batch-1 graph is rewritten for it).
        threads: ONNX Runtime threads.
        providers: ONNX Runtime execution providers (default: the CPU; a GPU run passes
            CUDA first where onnxruntime-gpu is installed, see :func:`teacher_providers`).

    Raises:
        TeacherError: no such file, no sidecar, labels instead of logits, other classes,
            or a graph ONNX Runtime cannot load.
    """

    def __init__(self, model_path: str | Path, class_names: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], *, batch: int = 1,
                 threads: int | None = None, providers: list[str] | None = None) -> None:
        from engines.backend import BackendError
        from engines.ort_backend import OrtBackend
        from engines.spec import ModelSpecError

        path = Path(model_path)
        spec = teacher_spec(path)
        if list(spec.class_names) != list(class_names):
            raise TeacherError(f"--distill {path} has the classes {list(spec.class_names)}, "
                               f"the training data {list(class_names)}: a teacher must "
                               "label the same classes in the same order")
        try:
            self.backend = OrtBackend(path, spec, threads=threads, batch=batch,
                                      providers=providers)
        except (BackendError, ModelSpecError) as e:
            raise TeacherError(f"--distill {path}: {e}") from e
        self.path, self.spec = path, spec
        t_mean, t_std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
        s_mean, s_std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        # student-normalised x -> pixel / 255 = x * s_std + s_mean -> teacher-normalised
        self._scale = torch.from_numpy(s_std / t_std).view(1, 3, 1, 1)
        self._shift = torch.from_numpy((s_mean - t_mean) / t_std).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a student batch.

        Args:
            x: (N, 3, H, W) float, normalised for the student, on any device.
        Returns:
            (N, K, h, w) float32 on the CPU: the teacher's logits, at its output stride,
            for the batch scaled (bilinearly, aspect kept) to fit the teacher's input and
            padded there with its mean colour; only the logits of the batch's own area are
            returned (a 288x288 crop for a 360x480 teacher: scaled to 360x360, the left
            three quarters of the logits). Never stretched: a teacher sees shapes as in
            its own training.
        """
        xt = x.detach().float().cpu() * self._scale + self._shift  # (N, 3, H, W)
        (th, tw), (h, w) = self.spec.input_size, xt.shape[-2:]
        s = min(th / h, tw / w)
        rh, rw = min(th, round(h * s)), min(tw, round(w * s))
        if (rh, rw) != (h, w):
            xt = F.interpolate(xt, size=(rh, rw), mode="bilinear", align_corners=False)
        if (rh, rw) != (th, tw):  # 0 after the teacher's normalisation: its mean colour
            xt = F.pad(xt, (0, tw - rw, 0, th - rh))  # (N, 3, th, tw)
        arr = xt.numpy().astype(self.backend.input_dtype, copy=False)
        step = self.backend.max_batch
        outs = [self.backend.infer(np.ascontiguousarray(arr[i:i + step]))
                for i in range(0, len(arr), step)]
        logits = np.concatenate(outs).astype(np.float32, copy=False)  # (N, K, oh, ow)
        # The logit cells over the crop's area. Nearest, rounding halves up on both axes
        # (Python's round() would round 22.5 down and 23.5 up): exact for outputs of
        # input / stride (every shipped model); within half a cell otherwise.
        oh, ow = logits.shape[-2:]
        vh = min(oh, max(1, math.floor(oh * rh / th + 0.5)))
        vw = min(ow, max(1, math.floor(ow * rw / tw + 0.5)))
        return torch.from_numpy(np.ascontiguousarray(logits[..., :vh, :vw]))

    def close(self) -> None:
        self.backend.close()


def teacher_providers(device_type: str) -> list[str] | None:
    """ONNX Runtime providers for a teacher beside a student on ``device_type``: CUDA
    first when the student trains on CUDA and this onnxruntime has it (onnxruntime-gpu),
    else None (the CPU: on a GPU run the teacher then costs CPU time every step)."""
    if device_type != "cuda":
        return None
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                 temperature: float = 1.0, ignore_index: int = 255,
                 class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise KL(teacher || student) at ``temperature``, times its square, averaged
    over the pixels whose label is not ``ignore_index`` (padding and void: the teacher's
    guess there is no target either); with ``class_weight``, a weighted mean in which a
    pixel counts by its label's weight (as in the cross-entropy), so the few pixels of a
    sign are not drowned by the sky's.

    Args:
        student: (N, K, hs, ws) logits (gradients flow into these).
        teacher: (N, K, ht, wt) logits (constants); the student's are resized bilinearly
            to this size, where the teacher's finer stride keeps thin objects.
        target: (N, H, W) int64 labels; the mask (and the weights) are taken from them at
            nearest pixels.
        class_weight: optional (K,) float weights per class, >= 0.
    Returns:
        A scalar; 0 (still attached to ``student``) when every pixel is ignored.
    """
    size = teacher.shape[-2:]
    s = student.float()
    if s.shape[-2:] != size:
        s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
    t = teacher.to(s.device, torch.float32)
    log_ps = F.log_softmax(s / temperature, dim=1)  # (N, K, h, w)
    log_pt = F.log_softmax(t / temperature, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # (N, h, w)
    labels = F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()
    keep = labels != ignore_index  # (N, h, w)
    if not keep.any():
        return s.sum() * 0.0
    if class_weight is None:
        return kl[keep].mean() * temperature ** 2
    w = class_weight.to(s.device, torch.float32)[labels[keep]]  # (P,) one per kept pixel
    return (kl[keep] * w).sum() / w.sum().clamp_min(1e-12) * temperature ** 2
