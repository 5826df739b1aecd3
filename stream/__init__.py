"""segstream.stream: capture, pipeline, publish/subscribe and the command line."""

import contextlib
import ctypes

__version__ = "0.1.0"


def _prefer_libgcc_unwinder() -> None:
    """Load libgcc_s globally before GStreamer can load libunwind.

    Debian's libgstreamer links libunwind, whose ``_Unwind_*`` symbols then interpose
    libgcc's for every C++ library loaded later (ONNX Runtime, torch, matplotlib's
    extensions): any C++ exception they throw, even one they catch themselves, aborts
    the process. With libgcc_s already in the global scope, its unwinder wins.
    """
    with contextlib.suppress(OSError):  # no libgcc_s (musl, macOS): nothing to fix
        ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)


_prefer_libgcc_unwinder()
