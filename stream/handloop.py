"""The baseline for ``segstream bench --compare``: the loop a careful user writes by hand.

One thread, one frame at a time, in this order (:meth:`HandLoop.segment` is steps 2-4):

1. ``cv2.VideoCapture.read()``: OpenCV's FFmpeg decoder, (H, W, 3) uint8 BGR.
2. ``cv2.dnn.blobFromImage``: bilinear resize to the model input, x/255, BGR->RGB, NCHW;
   then ``(x - mean) / std`` in NumPy: (1, 3, h, w) float32 (float16 for an FP16 model).
3. ONNX Runtime ``InferenceSession.run`` on the CPU with the session options of the
   pipeline's engine written out: ``intra_op_num_threads`` = its thread count and
   spin-waiting off (``session.intra_op.allow_spinning=0``); the rest are ORT's defaults
   (sequential execution, all graph optimisations). With ORT's default spinning the same
   session ran 1.5-3x slower on the 2-core VM while other processes shared its cores: the
   baseline would be weaker for a reason a careful user avoids, and the speed-up would
   not measure the pipeline's structure.
4. :class:`engines.postprocess.Postprocessor`: bilinear upsample of the (K, h', w')
   logits to the frame size, then argmax -> (H, W) uint8. The same call the pipeline
   makes, so both produce the same label-map quality (a model with in-graph labels gets
   the same nearest-neighbour resize as in the pipeline) and a faster post-processing
   kernel speeds both up alike: the speed-up figure measures the pipeline's structure.
5. zstd level 1 (``zstandard``, the pipeline's default encoding), then a 3-part ZeroMQ
   message (topic, JSON header, payload) on a PUB socket. A subscriber thread in the
   same process receives and decompresses every map, as the pipeline's bench subscriber
   does. (The socket is an XPUB, which sends exactly like PUB, so that the clock starts
   only once the subscriber is connected.)

Kept plain on purpose: it is what the pipeline is measured against, not something to
run in production (no reconnection, no dropped-frame policy, no wire-format checks).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq
import zstandard

from engines.ort_backend import default_threads
from engines.postprocess import Postprocessor
from engines.spec import ModelSpec, sidecar_path


class HandLoop:
    """Pre-process, ONNX Runtime and post-process one frame, written as a user would.

    Args:
        model: an ``.onnx`` file with its JSON sidecar.
        threads: ORT intra-op threads (``None``: all cores, at most 4, like the pipeline).
    """

    def __init__(self, model: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.spec = ModelSpec.load(sidecar_path(model))
        so = ort.SessionOptions()
        self.threads = threads or default_threads()
        so.intra_op_num_threads = self.threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.input_name = inp.name
        self.dtype = np.float16 if "float16" in inp.type else np.float32
        self.mean = np.asarray(self.spec.mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(self.spec.std, np.float32).reshape(1, 3, 1, 1)
        self.post = Postprocessor(self.spec)

    def segment(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> (H, W) uint8 labels at the frame's size."""
        h, w = self.spec.input_size
        x = cv2.dnn.blobFromImage(frame, 1 / 255.0, (w, h), swapRB=True)  # (1, 3, h, w) RGB
        x = ((x - self.mean) / self.std).astype(self.dtype)
        out = self.sess.run(None, {self.input_name: x})[0][0]  # (K, h', w') or (h, w)
        return self.post(out, frame.shape[:2])


@dataclass
class _Received:
    """What the subscriber thread saw."""

    maps: int = 0
    bytes: int = 0


def _receive(ctx: zmq.Context, endpoint: str, stop: threading.Event, box: _Received) -> None:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    dctx = zstandard.ZstdDecompressor()
    try:
        while not stop.is_set() or sub.poll(0):
            if not sub.poll(50):
                continue
            _topic, header, payload = sub.recv_multipart()
            shape = json.loads(header)["shape"]
            labels = np.frombuffer(dctx.decompress(payload), np.uint8).reshape(shape)
            box.maps += 1
            box.bytes += labels.size
    finally:
        sub.close()


def run_hand_loop(model: Path, video: Path, frames: int, endpoint: str, *,
                  threads: int | None = None) -> dict[str, Any]:
    """Segment and send the first ``frames`` frames of ``video``; every frame is processed.

    Returns frames, seconds (first read to last send), fps, per-frame p50/p99 ms
    (read -> sent) and ``received`` (maps the subscriber got and decompressed).
    """
    loop = HandLoop(model, threads)
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    stop, got = threading.Event(), _Received()
    receiver = threading.Thread(target=_receive, args=(ctx, endpoint, stop, got), daemon=True)
    receiver.start()
    cap = cv2.VideoCapture(str(video))
    cctx = zstandard.ZstdCompressor(level=1)
    per_frame: list[float] = []
    try:
        if not pub.poll(5000):
            raise RuntimeError(f"the hand loop's subscriber did not connect to {endpoint}")
        pub.recv()  # the subscription
        if not cap.isOpened():
            raise RuntimeError(f"OpenCV cannot open {video}")
        start = time.perf_counter()
        while len(per_frame) < frames:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            labels = loop.segment(frame)  # (H, W) uint8
            header = {"camera": "cam0", "seq": len(per_frame), "t_capture": time.time_ns(),
                      "shape": list(labels.shape)}
            pub.send_multipart([b"seg/cam0", json.dumps(header).encode(),
                                cctx.compress(labels.tobytes())])
            per_frame.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - start
    finally:
        cap.release()
        deadline = time.monotonic() + 2.0  # let the subscriber drain what was sent
        while got.maps < len(per_frame) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        receiver.join(5)
        pub.close()
    n = len(per_frame)
    ms = np.array(per_frame) * 1e3 if per_frame else np.array([np.nan])
    return {"frames": n, "seconds": seconds, "fps": n / seconds if seconds > 0 else 0.0,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "received": got.maps, "threads": loop.threads}
