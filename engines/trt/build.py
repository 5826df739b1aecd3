"""Build a TensorRT engine from ONNX: strongly typed, with optimisation profiles, a
persisted timing cache, and a provenance sidecar.

Precision is a property of the ONNX, not a builder switch: the network is created strongly
typed, so TensorRT runs each layer in the type the graph gives it. FP16 comes from an FP16
ONNX (``segstream export --fp16``), INT8 from an explicitly quantized Q/DQ ONNX
(``segstream calibrate``). ``precision`` is checked against the graph (:func:`check_precision`)
and recorded; no deprecated ``BuilderFlag.FP16/INT8`` and no implicit calibrator are used.

The pure-Python parts (ONNX inspection, shape parsing and checks) run anywhere;
:func:`build_engine` needs TensorRT >= 10 and a CUDA GPU.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

from engines.atomic import write_bytes
from engines.onnx_portable import portable_model_bytes
from engines.ort_backend import check_graph_against_spec, graph_io_dims
from engines.spec import ModelSpec, sidecar_path
from engines.trt import compat
from engines.trt.engine_info import (
    PRECISIONS,
    EngineRecord,
    ShapeRange,
    fmt_shape,
    sha256_file,
    write_engine_sidecar,
)

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Integer-arithmetic ops (ONNX Runtime's operator-oriented quantization): TensorRT has none.
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd")


class BuildError(RuntimeError):
    """The engine could not be built; the message lists the reasons and the fix."""


class PrecisionMismatchError(BuildError):
    """``--precision`` does not match what the ONNX graph's tensor types say."""


# ---------------------------------------------------------------------------------------
# ONNX inspection
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxPrecision:
    """What the graph's tensor types say about the precision it builds in."""

    qdq_nodes: int  # QuantizeLinear + DequantizeLinear nodes
    fp16_tensors: int  # float16 initializers, Constant values and Cast(to=FLOAT16)
    uint8_zero_points: int  # asymmetric uint8 quantization (TensorRT needs int8)
    nonzero_zero_points: int  # TensorRT needs symmetric quantization (zero point 0)
    integer_ops: tuple[str, ...]  # QLinearConv & co, unsupported by TensorRT

    @property
    def detected(self) -> str:
        if self.qdq_nodes:
            return "int8"
        return "fp16" if self.fp16_tensors else "fp32"


def inspect_precision(model: onnx.ModelProto) -> OnnxPrecision:
    """Count the graph's Q/DQ nodes, float16 tensors and quantization parameters."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    fp16 = sum(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    qdq = 0
    zp_u8 = zp_nonzero = 0
    integer_ops: set[str] = set()
    for node in graph.node:
        if node.op_type in INTEGER_OPS:
            integer_ops.add(node.op_type)
        elif node.op_type == "Constant":
            fp16 += any(a.t.data_type == onnx.TensorProto.FLOAT16 for a in node.attribute)
        elif node.op_type == "Cast":
            fp16 += any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16
                        for a in node.attribute)
        elif node.op_type in QDQ_OPS:
            qdq += 1
            if len(node.input) > 2 and node.input[2] in inits:
                zp = onnx.numpy_helper.to_array(inits[node.input[2]])
                zp_u8 += zp.dtype.kind == "u"
                zp_nonzero += bool((zp != 0).any())
    return OnnxPrecision(qdq, fp16, zp_u8, zp_nonzero, tuple(sorted(integer_ops)))


def check_precision(requested: str, info: OnnxPrecision, onnx_path: str | Path) -> None:
    """Require the ONNX to carry the requested precision (strongly typed build).

    Raises:
        PrecisionMismatchError: naming what the graph holds and how to produce the right one.
    """
    if requested not in PRECISIONS:
        raise PrecisionMismatchError(f"--precision must be one of {PRECISIONS}, got "
                                     f"{requested!r}")
    if info.integer_ops:
        raise PrecisionMismatchError(
            f"{onnx_path} uses integer ops {list(info.integer_ops)} (operator-oriented "
            "quantization), which TensorRT cannot build; quantize with Q/DQ nodes for "
            "TensorRT: segstream calibrate MODEL.onnx --data DIR --profile tensorrt")
    found = info.detected
    if requested == found:
        if found == "int8" and (info.uint8_zero_points or info.nonzero_zero_points):
            raise PrecisionMismatchError(
                f"{onnx_path} is quantized asymmetrically ({info.uint8_zero_points} uint8 / "
                f"{info.nonzero_zero_points} non-zero zero points); TensorRT needs symmetric "
                "int8 (zero point 0): segstream calibrate MODEL.onnx --data DIR "
                "--profile tensorrt")
        return
    how = {
        "fp32": "export an FP32 ONNX: segstream export CKPT --out model.onnx",
        "fp16": "export an FP16 ONNX: segstream export CKPT --fp16 --out model.fp16.onnx",
        "int8": "quantize the FP32 ONNX: segstream calibrate model.onnx --data DIR "
                "--profile tensorrt",
    }[requested]
    holds = {
        "fp32": "only float32 tensors",
        "fp16": f"{info.fp16_tensors} float16 tensors and no Q/DQ nodes",
        "int8": f"{info.qdq_nodes} QuantizeLinear/DequantizeLinear nodes",
    }[found]
    raise PrecisionMismatchError(
        f"--precision {requested}, but {onnx_path} holds {holds}, so a strongly typed build "
        f"runs it in {found}. Pass --precision {found}, or {how}.")


def onnx_inputs(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Graph inputs (not initializers) -> dims, ``None`` where dynamic."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                             else None for d in dims)
    return out


# ---------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------

_SHAPE_RE = re.compile(r"^(?:(?P<name>[^:]+):)?(?P<dims>\d+(?:x\d+)*)$")


def parse_shape_arg(text: str) -> tuple[str | None, tuple[int, ...]]:
    """``"input:1x3x360x480"`` -> ``("input", (1, 3, 360, 480))``; the name is optional."""
    m = _SHAPE_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad shape {text!r}: expected NAME:DxDxD..., e.g. input:1x3x360x480 "
                         "(or 1x3x360x480 for a single-input model)")
    dims = tuple(int(d) for d in m.group("dims").split("x"))
    if min(dims) <= 0:
        raise ValueError(f"bad shape {text!r}: dimensions must be > 0")
    return m.group("name"), dims


def _by_input(args: Sequence[str], inputs: Sequence[str], flag: str
              ) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for text in args:
        name, dims = parse_shape_arg(text)
        if name is None:
            if len(inputs) != 1:
                raise ValueError(f"{flag} {text}: the model has inputs {list(inputs)}; name "
                                 f"one, e.g. {inputs[0]}:{text}")
            name = inputs[0]
        if name not in inputs:
            raise ValueError(f"{flag} {text}: no input {name!r}; the model's inputs are "
                             f"{list(inputs)}")
        out[name] = dims
    return out


def resolve_shapes(inputs: dict[str, tuple[int | None, ...]], *, shape: Sequence[str] = (),
                   min_shape: Sequence[str] = (), opt_shape: Sequence[str] = (),
                   max_shape: Sequence[str] = (),
                   default_hw: tuple[int, int] | None = None) -> tuple[ShapeRange, ...]:
    """(min, opt, max) per input from ``--shape`` / ``--min/--opt/--max-shape``.

    ``--shape`` fixes all three; ``--opt-shape`` defaults to it, ``--min/--max-shape`` to
    the opt shape. An input given nothing keeps its static ONNX shape; its dynamic dims
    default to batch 1 and the model's (H, W) for a 4-D NCHW input.

    Raises:
        ValueError: malformed shape, unknown input, rank or static-dimension mismatch.
    """
    names = list(inputs)
    given = {k: _by_input(v, names, f"--{k.replace('_', '-')}")
             for k, v in (("shape", shape), ("min_shape", min_shape),
                          ("opt_shape", opt_shape), ("max_shape", max_shape))}
    ranges = []
    for name, dims in inputs.items():
        opt = given["opt_shape"].get(name) or given["shape"].get(name)
        if opt is None:
            opt = _default_shape(name, dims, default_hw)
        lo = given["min_shape"].get(name, opt)
        hi = given["max_shape"].get(name, opt)
        rng = ShapeRange(name, lo, opt, hi)
        for label, shp in (("min", lo), ("opt", opt), ("max", hi)):
            if len(shp) != len(dims):
                raise ValueError(f"{name}: {label} shape {fmt_shape(shp)} has rank {len(shp)}, "
                                 f"the ONNX input has rank {len(dims)}")
            for i, (want, got) in enumerate(zip(dims, shp, strict=True)):
                if want is not None and want != got:
                    raise ValueError(
                        f"{name}: {label} shape {fmt_shape(shp)} sets dim {i} to {got}, but the "
                        f"ONNX fixes it at {want}; export with dynamic axes to change it")
        ranges.append(rng)
    return tuple(ranges)


def _default_shape(name: str, dims: tuple[int | None, ...],
                   default_hw: tuple[int, int] | None) -> tuple[int, ...]:
    if all(d is not None for d in dims):
        return tuple(int(d) for d in dims)  # type: ignore[arg-type]
    if len(dims) == 4 and default_hw is not None and dims[1] in (None, 3):
        fill = (1, 3, *default_hw)
        return tuple(d if d is not None else f for d, f in zip(dims, fill, strict=True))
    shown = "x".join("?" if d is None else str(d) for d in dims)
    raise ValueError(f"input {name} has dynamic shape {shown}: give --shape {name}:DxDx... "
                     "(and --min-shape/--max-shape for a range)")


# ---------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``segstream build`` passes to :func:`build_engine`."""

    precision: str = "fp32"
    shape: tuple[str, ...] = ()
    min_shape: tuple[str, ...] = ()
    opt_shape: tuple[str, ...] = ()
    max_shape: tuple[str, ...] = ()
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    verbose: bool = False
    batch: int = 1  # > 1: profile N min 1 / opt batch / max batch (cameras per engine call)


def default_engine_path(onnx_path: Path) -> Path:
    """``model.fp16.onnx`` -> ``model.fp16.trt.engine`` (sidecar ``model.fp16.trt.json``).

    The ``.trt`` keeps the engine's sidecar apart from the ONNX's (``model.fp16.json``).
    """
    return onnx_path.with_name(f"{onnx_path.stem}.trt.engine")


@dataclass(frozen=True)
class PreparedBuild:
    """The checked inputs of a build (everything decided before TensorRT is touched)."""

    onnx_path: Path
    out_path: Path
    spec: ModelSpec
    precision: OnnxPrecision
    shapes: tuple[ShapeRange, ...]
    rewrite_batch: bool = False  # the ONNX fixes N = 1: parse it with a symbolic N


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """The graph of ``path`` (external weights not loaded).

    Raises:
        BuildError: not an ONNX file (a checkpoint, an image, a Git LFS pointer).
    """
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is not ONNX
        raise BuildError(f"{path} is not a readable ONNX model ({type(e).__name__}); "
                         "give the .onnx from `segstream export` or `calibrate`") from None


def prepare_build(onnx_path: str | Path, out_path: str | Path | None,
                  opts: BuildOptions) -> PreparedBuild:
    """Check the ONNX, its sidecar, the precision and the shapes; no TensorRT needed.

    Raises:
        FileNotFoundError, ModelSpecError, PrecisionMismatchError, ValueError (shapes),
        BuildError (output would overwrite the ONNX's sidecar).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} not found")
    spec = ModelSpec.load(sidecar_path(onnx_path))
    out = Path(out_path) if out_path is not None else default_engine_path(onnx_path)
    if out.suffix not in (".engine", ".plan"):
        raise BuildError(f"--out {out}: use a .engine or .plan suffix (how the backend is "
                         "chosen)")
    if sidecar_path(out) == sidecar_path(onnx_path):
        raise BuildError(f"--out {out} would share the sidecar {sidecar_path(out)} with the "
                         f"ONNX; pick another stem, e.g. {default_engine_path(onnx_path)}")
    model = read_onnx(onnx_path)
    check_graph_against_spec(onnx_path, spec, *graph_io_dims(model))
    info = inspect_precision(model)
    check_precision(opts.precision, info, onnx_path)
    inputs = onnx_inputs(model)
    rewrite = False
    if opts.batch > 1:
        inputs, rewrite = batch_inputs(inputs, opts, onnx_path)
    shapes = resolve_shapes(inputs, shape=opts.shape, min_shape=opts.min_shape,
                            opt_shape=opts.opt_shape, max_shape=opts.max_shape,
                            default_hw=spec.input_size)
    if opts.batch > 1:
        (rng,) = shapes
        shapes = (ShapeRange(rng.name, (1, *rng.opt[1:]), (opts.batch, *rng.opt[1:]),
                             (opts.batch, *rng.opt[1:])),)
    return PreparedBuild(onnx_path, out, spec, info, shapes, rewrite)


def batch_inputs(inputs: dict[str, tuple[int | None, ...]], opts: BuildOptions,
                 onnx_path: Path) -> tuple[dict[str, tuple[int | None, ...]], bool]:
    """The inputs with a symbolic N for ``--batch``, and whether the graph needs the
    :mod:`engines.onnx_batch` rewrite (its N is fixed at 1).

    Raises:
        ValueError: several inputs, an input that is not (N, 3, H, W), an N fixed above 1,
            or --batch together with explicit shapes.
    """
    if opts.shape or opts.min_shape or opts.opt_shape or opts.max_shape:
        raise ValueError("--batch sets the profile's N (min 1, opt and max N): give it "
                         "without --shape/--min-shape/--opt-shape/--max-shape, or spell the "
                         "whole profile with those instead")
    if len(inputs) != 1 or len(next(iter(inputs.values()))) != 4:
        raise ValueError(f"--batch needs one (N, 3, H, W) input; {onnx_path} has inputs "
                         f"{list(inputs)}")
    name, dims = next(iter(inputs.items()))
    if dims[0] not in (None, 1):
        raise ValueError(f"{onnx_path} fixes the batch at {dims[0]}; re-export it with a "
                         "dynamic batch (`segstream export`)")
    return {name: (None, *dims[1:])}, dims[0] == 1


def _progress_monitor(trt: Any) -> Any:
    """A tqdm bar per top-level builder phase (TensorRT's IProgressMonitor), or None."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    from tqdm import tqdm

    class TqdmMonitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None,
                        num_steps: int) -> None:
            if parent_phase is None:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, unit="step",
                                              leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.n = step + 1
                bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmMonitor()


def build_engine(onnx_path: str | Path, out_path: str | Path | None = None,
                 opts: BuildOptions | None = None,
                 on_status: Callable[[str], None] = log.info) -> tuple[Path, EngineRecord]:
    """Build and write ``out_path`` (default ``model.trt.engine``) and its sidecar.

    The engine and its sidecar are written first (missing folders created); the timing
    cache is saved last, and a cache that cannot be read or written only costs a warning,
    never the finished build.

    Returns:
        (engine path, its :class:`EngineRecord`).
    Raises:
        TensorRTImportError: no TensorRT >= 10 or pycuda.
        BuildError: the parser rejected the graph (every error listed), the build failed,
            no CUDA device could be used, or the engine could not be written.
    """
    opts = opts or BuildOptions()
    prep = prepare_build(onnx_path, out_path, opts)
    trt = compat.import_tensorrt()
    try:
        cuda = compat.import_pycuda()
        device = compat.device_identity(cuda)
    except compat.CudaContextError as e:
        raise BuildError(str(e)) from e
    logger = compat.trt_logger(trt, verbose=opts.verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(compat.network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    on_status(f"parsing {prep.onnx_path} (strongly typed, {prep.precision.detected})")
    # ceil_mode AveragePools rewritten to PyTorch's meaning (engines/onnx_portable.py)
    portable = portable_model_bytes(prep.onnx_path)
    if prep.rewrite_batch:  # N fixed at 1 in the file: made symbolic (engines.onnx_batch)
        from engines.onnx_batch import dynamic_batch_bytes

        portable, changed = dynamic_batch_bytes(portable or prep.onnx_path)
        on_status(f"batch made dynamic: {'; '.join(changed)}")
    parsed = (parser.parse(portable, str(prep.onnx_path)) if portable is not None
              else parser.parse_from_file(str(prep.onnx_path)))
    if not parsed:
        errors = compat.parser_errors(parser)
        raise BuildError(f"TensorRT's ONNX parser rejected {prep.onnx_path} "
                         f"({len(errors)} errors):\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    if opts.workspace_mib is not None:
        compat.set_workspace(trt, config, opts.workspace_mib)
    cache = load_timing_cache(config, opts.timing_cache, on_status)
    shapes = ", ".join(f"{s.name} {fmt_shape(s.min)}..{fmt_shape(s.max)}" for s in prep.shapes)
    if any(-1 in tuple(network.get_input(i).shape) for i in range(network.num_inputs)):
        profile = builder.create_optimization_profile()
        for s in prep.shapes:
            try:  # TensorRT raises a bare RuntimeError for an unknown name or bad order
                profile.set_shape(s.name, s.min, s.opt, s.max)
            except (RuntimeError, TypeError, ValueError) as e:
                raise BuildError(f"TensorRT refused the shapes of input {s.name!r} "
                                 f"({fmt_shape(s.min)}..{fmt_shape(s.max)}): {e}") from e
        if config.add_optimization_profile(profile) < 0:
            raise BuildError(f"TensorRT refused the optimisation profile {shapes}; see the "
                             "TensorRT log above (rerun with --verbose)")
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    on_status(f"building for {device.describe()} with TensorRT {trt.__version__}; {shapes}")
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT could not build {prep.onnx_path}; see the TensorRT log "
                         "above (rerun with --verbose for details)")
    on_status(f"built in {time.monotonic() - t0:.1f} s")
    try:
        write_bytes(prep.out_path, bytes(serialized), mkdir=True)
    except OSError as e:
        raise BuildError(f"cannot write the engine to {prep.out_path} ({e}); pass a writable "
                         "--out") from e
    record = EngineRecord(
        tensorrt_version=trt.__version__, gpu_name=device.name,
        compute_capability=device.compute_capability,
        precision=opts.precision, shapes=prep.shapes, source_onnx=prep.onnx_path.name,
        onnx_sha256=sha256_file(prep.onnx_path), engine_sha256=sha256_file(prep.out_path),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        workspace_mib=opts.workspace_mib, sm_count=device.sm_count,
        total_memory_mib=device.total_memory_mib, integrated=device.integrated,
        board=device.board, cuda_driver_version=device.cuda_driver_version)
    write_engine_sidecar(prep.out_path, prep.spec, record)
    if opts.timing_cache is not None and cache is not None:
        save_timing_cache(config.get_timing_cache(), opts.timing_cache, on_status)
    return prep.out_path, record


def load_timing_cache(config: Any, path: Path | None,
                      on_status: Callable[[str], None]) -> Any:
    """Attach a timing cache (from ``path`` when it exists), so rebuilds skip kernel timing.

    An unreadable, corrupt or mismatched (other GPU / TensorRT) cache file is replaced by a
    fresh cache with a warning; the file itself is only overwritten after a successful
    build. Returns the attached ``ITimingCache``, or None without ``path``.
    """
    if path is None:
        return None
    data = b""
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as e:
            _warn(on_status, f"cannot read timing cache {path} ({e}); starting a fresh one")
    if data:
        try:
            cache = config.create_timing_cache(data)
            # TensorRT returns None for bytes it cannot deserialise
            ok = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
        except (TypeError, RuntimeError, ValueError) as e:
            cache, ok = None, False
            _warn(on_status, f"timing cache {path} is corrupt ({e}); starting a fresh one")
        else:
            if cache is None:
                _warn(on_status, f"timing cache {path} is corrupt or truncated (TensorRT "
                      "could not read it); starting a fresh one")
            elif not ok:
                _warn(on_status, f"timing cache {path} is from another GPU or TensorRT "
                      "version; starting a fresh one")
        if ok:
            on_status(f"timing cache loaded from {path} ({len(data)} bytes)")
            return cache
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def save_timing_cache(cache: Any, path: Path, on_status: Callable[[str], None]) -> bool:
    """Serialise ``cache`` to ``path`` (folders created); False with a warning on failure,
    so a cache problem never loses the engine that was just built."""
    try:
        data = bytes(cache.serialize())
        write_bytes(path, data, mkdir=True)
    except (OSError, RuntimeError, TypeError) as e:
        _warn(on_status, f"timing cache not saved to {path} ({e}); the engine is fine, the "
              "next build just times kernels again. Pick a writable --timing-cache, e.g. "
              "~/.cache/segstream/trt.cache")
        return False
    on_status(f"timing cache saved to {path} ({len(data)} bytes)")
    return True


def _warn(on_status: Callable[[str], None], message: str) -> None:
    log.warning("%s", message)
    if on_status is not log.info:
        on_status(f"warning: {message}")
