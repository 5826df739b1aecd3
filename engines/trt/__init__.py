"""TensorRT 10/11 path: engine building (:mod:`.build`), the ``tensorrt`` backend
(:mod:`.backend`), the all-GPU frame pipeline (:mod:`.pipeline`) and version shims
(:mod:`.compat`).

Nothing here imports TensorRT or pycuda at module import time: ``import engines.trt.build``
works on any machine (the ONNX checks, shape parsing and sidecar checks are pure Python);
building and running engines needs a CUDA machine with ``pip install 'segstream[gpu]'``.
"""
