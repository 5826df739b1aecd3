"""The baseline for ``segstream bench --compare``: the loop a user writes by hand.

OpenCV capture, NumPy pre-processing, an ONNX Runtime session with default options,
NumPy argmax, a pickled dict over a ZeroMQ PUB socket. Kept deliberately plain (this is
what the pipeline is measured against, not something to run in production).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import zmq

from engines.spec import ModelSpec, sidecar_path


def run_hand_loop(model: Path, video: Path, frames: int, endpoint: str) -> dict[str, float]:
    """Segment the first ``frames`` frames of ``video``; returns fps and per-frame ms."""
    import onnxruntime as ort

    spec = ModelSpec.load(sidecar_path(model))
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    h, w = spec.input_size
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise RuntimeError(f"OpenCV cannot open {video}")
    per_frame = []
    n = 0
    start = time.perf_counter()
    try:
        while n < frames:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            x = cv2.resize(frame, (w, h))[:, :, ::-1].astype(np.float32) / 255.0
            x = ((x - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
            out = sess.run(None, {name: x})[0][0]
            labels = out if spec.output == "labels" else np.argmax(out, axis=0)
            labels = cv2.resize(labels.astype(np.uint8), (frame.shape[1], frame.shape[0]),
                                interpolation=cv2.INTER_NEAREST)
            sock.send_pyobj({"camera": "cam0", "seq": n, "t": time.time(), "labels": labels})
            per_frame.append(time.perf_counter() - t0)
            n += 1
    finally:
        cap.release()
        sock.close()
    seconds = time.perf_counter() - start
    ms = np.array(per_frame) * 1e3 if per_frame else np.array([np.nan])
    return {"frames": n, "seconds": seconds, "fps": n / seconds if seconds else 0.0,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
