"""The engine sidecar: what an engine was built from, with what, for which GPU.

A TensorRT engine only runs on the TensorRT version and GPU model it was built for. The
build writes ``model.trt.engine`` next to ``model.trt.json``: the model's
:class:`~engines.spec.ModelSpec` plus a ``"tensorrt"`` section (:class:`EngineRecord`).
The backend reads the section and refuses a mismatched engine *before* deserialising it,
with the reason and the rebuild command, instead of TensorRT's opaque failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.atomic import write_text
from engines.spec import ModelSpec, ModelSpecError, sidecar_path

PRECISIONS = ("fp32", "fp16", "int8")
RECORD_KEY = "tensorrt"
# Relative difference in reported GPU memory above which two modules count as different
# models (the carve-outs of one module differ by far less across JetPack releases).
MEMORY_TOLERANCE = 0.10

log = logging.getLogger(__name__)


class EngineMismatchError(RuntimeError):
    """The engine was built for another GPU or TensorRT version, or its file changed."""


@dataclass(frozen=True)
class ShapeRange:
    """One optimisation-profile entry: an input's (min, opt, max) shapes."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"{self.name}: min/opt/max shapes differ in rank: "
                             f"{self.min} {self.opt} {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 0 < lo <= mid <= hi:
                raise ValueError(f"{self.name}: need 0 < min <= opt <= max per dimension, got "
                                 f"min {fmt_shape(self.min)}, opt {fmt_shape(self.opt)}, "
                                 f"max {fmt_shape(self.max)}")

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class DeviceIdentity:
    """What tells one GPU model from another of the same architecture.

    The name alone does not: AGX Orin, Orin NX and Orin Nano all report ``"Orin"`` (sm_87).
    They differ in SM count (AGX Orin 16/14, Orin NX 8/6, Orin Nano 8/4), memory (64/32,
    16/8, 8/4 GB) and board model (``/proc/device-tree/model``); the CUDA driver version
    tells JetPack releases apart.
    """

    name: str
    compute_capability: tuple[int, int]
    sm_count: int | None = None
    total_memory_mib: int | None = None
    integrated: bool | None = None  # True on Jetson (GPU shares the system RAM)
    board: str | None = None  # /proc/device-tree/model on Jetson, else None
    cuda_driver_version: str | None = None  # "12.6"

    def describe(self) -> str:
        """``"Orin (sm_87, 8 SMs, 7620 MiB, NVIDIA Jetson Orin Nano ...)"``."""
        parts = [f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"]
        if self.sm_count is not None:
            parts.append(f"{self.sm_count} SMs")
        if self.total_memory_mib is not None:
            parts.append(f"{self.total_memory_mib} MiB")
        if self.board:
            parts.append(self.board)
        return f"{self.name} ({', '.join(parts)})"


@dataclass(frozen=True)
class EngineRecord:
    """Provenance and compatibility facts of one built engine (the sidecar's ``tensorrt``)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    shapes: tuple[ShapeRange, ...]
    source_onnx: str  # file name of the ONNX it was built from
    onnx_sha256: str
    engine_sha256: str
    built_at: str  # ISO 8601 UTC
    workspace_mib: int | None = None
    # Module identity (None in sidecars written before it was recorded), see DeviceIdentity.
    sm_count: int | None = None
    total_memory_mib: int | None = None
    integrated: bool | None = None
    board: str | None = None
    cuda_driver_version: str | None = None

    @property
    def device(self) -> DeviceIdentity:
        """The GPU this engine was built on, as far as the sidecar records it."""
        return DeviceIdentity(self.gpu_name, self.compute_capability, self.sm_count,
                              self.total_memory_mib, self.integrated, self.board,
                              self.cuda_driver_version)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        d["shapes"] = {s.name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)}
                       for s in self.shapes}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> EngineRecord:
        try:
            shapes = tuple(ShapeRange(name, tuple(r["min"]), tuple(r["opt"]), tuple(r["max"]))
                           for name, r in d["shapes"].items())
            cc = tuple(int(v) for v in d["compute_capability"])
            if len(cc) != 2:
                raise ValueError(f"compute_capability must be [major, minor], got {cc}")
            return cls(
                tensorrt_version=str(d["tensorrt_version"]), gpu_name=str(d["gpu_name"]),
                compute_capability=(cc[0], cc[1]), precision=str(d["precision"]),
                shapes=shapes, source_onnx=str(d["source_onnx"]),
                onnx_sha256=str(d["onnx_sha256"]), engine_sha256=str(d["engine_sha256"]),
                built_at=str(d["built_at"]), workspace_mib=d.get("workspace_mib"),
                sm_count=_opt(d, "sm_count", int),
                total_memory_mib=_opt(d, "total_memory_mib", int),
                integrated=_opt(d, "integrated", bool), board=_opt(d, "board", str),
                cuda_driver_version=_opt(d, "cuda_driver_version", str))
        except KeyError as e:
            raise ModelSpecError(f"{source}: '{RECORD_KEY}' section lacks {e.args[0]!r}; "
                                 "rebuild the engine with `segstream build`") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ModelSpecError(f"{source}: bad '{RECORD_KEY}' section: {e}") from None


def _opt(d: Mapping[str, Any], key: str, kind: type) -> Any:
    value = d.get(key)
    if value is None:
        return None
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{key} must be true/false, got {value!r}")
    return kind(value)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_engine_sidecar(engine_path: Path, spec: ModelSpec, record: EngineRecord) -> Path:
    """``model.trt.engine`` -> ``model.trt.json``: the spec plus the ``tensorrt`` record."""
    data = spec.to_json()
    data[RECORD_KEY] = record.to_json()
    path = sidecar_path(engine_path)
    write_text(path, json.dumps(data, indent=2) + "\n", mkdir=True)
    return path


def read_engine_record(engine_path: str | Path) -> EngineRecord:
    """The ``tensorrt`` section of an engine's sidecar.

    Raises:
        ModelSpecError: no sidecar, or one without a ``tensorrt`` section (not built by
            ``segstream build``).
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ModelSpecError(f"engine sidecar {path} not found: build engines with "
                             "`segstream build MODEL.onnx`, which writes it")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"{path}: not valid JSON ({e})") from None
    if RECORD_KEY not in data:
        raise ModelSpecError(f"{path} has no '{RECORD_KEY}' section, so the engine's GPU and "
                             "TensorRT version are unknown; rebuild it with `segstream build`")
    return EngineRecord.from_json(data[RECORD_KEY], source=str(path))


def check_compatible(record: EngineRecord, *, tensorrt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int], engine_path: str | Path,
                     verify_hash: bool = True, force: bool = False,
                     device: DeviceIdentity | None = None,
                     engine_bytes: bytes | None = None) -> list[str]:
    """Refuse an engine this process cannot run, naming the reason and the fix.

    TensorRT engines are tied to the exact TensorRT release and the GPU model (its
    compute capability *and* SKU: kernels are tuned per SM count and clocks). The GPU name
    does not tell Orin modules apart, so with ``device`` (this GPU's identity) the SM count,
    memory size and board model recorded at build time are compared too.
    ``force=True`` accepts another GPU model of the same compute capability (never another
    TensorRT version or architecture, which cannot work). Give ``engine_bytes`` (the
    file's content, read once) to hash exactly the bytes that will be deserialised.

    Returns:
        Warnings (also logged): a forced model mismatch, another CUDA driver (JetPack)
        release, or a sidecar too old to record the module identity.
    Raises:
        EngineMismatchError: different TensorRT version, GPU or compute capability, or the
            engine file does not match the hash recorded at build time.
    """
    rebuild = (f"rebuild it on this machine: segstream build {record.source_onnx} "
               f"--precision {record.precision}")
    warnings: list[str] = []
    if record.tensorrt_version != tensorrt_version:
        raise EngineMismatchError(
            f"{engine_path} was built with TensorRT {record.tensorrt_version}, this is "
            f"TensorRT {tensorrt_version}; engines only load in the release that built them. "
            + rebuild)
    if tuple(record.compute_capability) != tuple(compute_capability):
        raise EngineMismatchError(
            f"{engine_path} was built for {record.gpu_name} (compute capability "
            f"{'.'.join(map(str, record.compute_capability))}), this GPU is {gpu_name} "
            f"({'.'.join(map(str, compute_capability))}). " + rebuild)
    here = device or DeviceIdentity(gpu_name, tuple(compute_capability))  # type: ignore[arg-type]
    differences = _model_differences(record.device, here)
    if record.gpu_name != gpu_name:
        differences.insert(0, f"built on a {record.gpu_name}, this GPU is a {gpu_name}")
    if differences:
        message = (f"{engine_path}: {'; '.join(differences)}: same architecture but a "
                   "different GPU model, so its tuned kernels may be wrong or slow. " + rebuild)
        if not force:
            raise EngineMismatchError(message + " (or pass force=True to load it anyway)")
        warnings.append(message + " (loaded anyway: force=True)")
    if device is not None:
        if record.sm_count is None and device.sm_count is not None:
            warnings.append(
                f"{engine_path}: its sidecar records only the GPU name {record.gpu_name!r}, "
                "which does not tell e.g. AGX Orin from Orin NX or Orin Nano; " + rebuild
                + " to record the module")
        if (record.cuda_driver_version and device.cuda_driver_version
                and record.cuda_driver_version != device.cuda_driver_version):
            warnings.append(
                f"{engine_path} was built under CUDA driver {record.cuda_driver_version}, this "
                f"is {device.cuda_driver_version} (another JetPack / driver release); it may "
                "load but is untested there. " + rebuild)
    if verify_hash:
        actual = (hashlib.sha256(engine_bytes).hexdigest() if engine_bytes is not None
                  else sha256_file(engine_path))
        if actual != record.engine_sha256:
            raise EngineMismatchError(
                f"{engine_path} does not match its sidecar (sha256 {actual[:12]}... vs "
                f"{record.engine_sha256[:12]}... recorded at build time): the engine or the "
                "sidecar was replaced. " + rebuild)
    for w in warnings:
        log.warning("%s", w)
    return warnings


def _model_differences(built: DeviceIdentity, here: DeviceIdentity) -> list[str]:
    """How two GPUs of one architecture differ, where both sides are known."""
    out = []
    if built.sm_count is not None and here.sm_count is not None \
            and built.sm_count != here.sm_count:
        out.append(f"built on a GPU with {built.sm_count} SMs, this one has {here.sm_count}")
    if built.total_memory_mib and here.total_memory_mib:
        ratio = abs(built.total_memory_mib - here.total_memory_mib) / built.total_memory_mib
        if ratio > MEMORY_TOLERANCE:
            out.append(f"built with {built.total_memory_mib} MiB of GPU memory, this GPU has "
                       f"{here.total_memory_mib} MiB")
    if built.board and here.board and built.board != here.board:
        out.append(f"built on a {built.board}, this is a {here.board}")
    return out
