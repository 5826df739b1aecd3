"""Test media made on the spot: small encoded video files and a real RTSP server.

Nothing here is mocked: files are encoded by GStreamer (or OpenCV) pipelines and the
server is GstRtspServer on 127.0.0.1 with its own GLib main loop thread.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.gst import gst_available, load_gst

# Container -> (encoder, muxer) for encode_video.
CONTAINERS = {"avi": ("avenc_mpeg4", "avimux"), "mkv": ("avenc_mpeg4", "matroskamux"),
              "mp4": ("avenc_mpeg4", "mp4mux")}


def require_gst() -> None:
    if not gst_available():
        pytest.skip("GStreamer (PyGObject) is not importable")


def require_elements(*names: str) -> None:
    require_gst()
    Gst = load_gst().Gst
    missing = [n for n in names if Gst.ElementFactory.find(n) is None]
    if missing:
        pytest.skip(f"GStreamer elements not installed: {', '.join(missing)}")


def run_to_eos(description: str, timeout: float = 20.0) -> None:
    """Run a gst-launch description until EOS; raise on ERROR or timeout."""
    Gst = load_gst().Gst
    pipeline = Gst.parse_launch(description)
    try:
        pipeline.set_state(Gst.State.PLAYING)
        msg = pipeline.get_bus().timed_pop_filtered(
            int(timeout * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg is None:
            raise TimeoutError(f"no EOS within {timeout} s: {description}")
        if msg.type == Gst.MessageType.ERROR:
            raise RuntimeError(f"{description}: {msg.parse_error()[0].message}")
    finally:
        pipeline.set_state(Gst.State.NULL)


def encode_video(path: Path, frames: int, width: int = 160, height: int = 120,
                 fps: int = 30, container: str = "avi", audio: bool = False) -> Path:
    """Encode ``frames`` frames of a moving test pattern to ``path`` (MPEG-4 part 2), with
    a raw PCM audio track muxed in first when ``audio`` (mkv only)."""
    encoder, muxer = CONTAINERS[container]
    require_elements("videotestsrc", encoder, muxer)
    video = (f"videotestsrc num-buffers={frames} pattern=ball ! "
             f"video/x-raw,width={width},height={height},framerate={fps}/1 ! videoconvert ! "
             f"{encoder} ! queue ! mux.")
    sound = ""
    if audio:
        assert container == "mkv", "raw audio is muxed into Matroska only"
        rate = 16000
        sound = (f"audiotestsrc num-buffers={frames} samplesperbuffer={rate // fps} ! "
                 f"audio/x-raw,rate={rate},channels=1,format=S16LE ! queue ! mux. ")
    run_to_eos(f"{muxer} name=mux ! filesink location=\"{path}\" {sound}{video}")
    return path


def write_mjpg_avi(path: Path, frames: int, width: int = 96, height: int = 64,
                   fps: int = 30) -> Path:
    """Write ``frames`` frames with cv2.VideoWriter (MJPG in AVI); frame i is filled
    with gray level 8*i so order can be checked."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write MJPG/AVI here")
    for i in range(frames):
        writer.write(np.full((height, width, 3), (8 * i) % 256, np.uint8))
    writer.release()
    return path


class RtspTestServer:
    """GstRtspServer on 127.0.0.1 serving a live H.264 (or JPEG) test pattern at
    ``rtsp://127.0.0.1:<port>/test``.

    ``start()`` binds (port 0 picks a free one, kept for restarts); ``stop()`` disconnects
    every client, closes the listening socket and ends the main loop thread, like a camera
    that reboots.
    """

    def __init__(self, port: int = 0, width: int = 160, height: int = 120,
                 fps: int = 15, audio: bool = False) -> None:
        require_gst()
        import gi

        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GstRtspServer

        self._rtsp = GstRtspServer
        Gst = load_gst().Gst
        pay = "pay1" if audio else "pay0"  # with audio, the video is the second stream
        if Gst.ElementFactory.find("openh264enc") is not None:
            enc = f"openh264enc ! rtph264pay name={pay} pt=96 config-interval=1"
        elif Gst.ElementFactory.find("jpegenc") is not None:
            enc = f"jpegenc ! rtpjpegpay name={pay} pt=26"
        else:
            pytest.skip("no H.264 or JPEG encoder for the RTSP test server")
        sound = ("audiotestsrc is-live=true ! audioconvert ! audio/x-raw,rate=8000,channels=1 "
                 "! rtpL16pay name=pay0 pt=97 ") if audio else ""
        self.launch = (f"( {sound}videotestsrc is-live=true pattern=ball ! video/x-raw,"
                       f"width={width},height={height},framerate={fps}/1,format=I420 ! {enc} )")
        self.port = port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self) -> RtspTestServer:
        GLib = load_gst().GLib
        self._context = GLib.MainContext()
        self._loop = GLib.MainLoop(self._context)
        server = self._rtsp.RTSPServer()
        server.set_address("127.0.0.1")
        server.set_service(str(self.port))
        factory = self._rtsp.RTSPMediaFactory()
        factory.set_launch(self.launch)
        factory.set_shared(True)
        server.get_mount_points().add_factory("/test", factory)
        self._source = server.create_source(None)  # binds now: raises if the port is taken
        self._source.attach(self._context)
        self.port = server.get_bound_port()
        self._server = server
        self._thread = threading.Thread(target=self._loop.run, name="rtsp-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        GLib = load_gst().GLib
        rtsp = self._rtsp

        def shutdown(*_args: object) -> bool:
            self._server.client_filter(lambda *_a: rtsp.RTSPFilterResult.REMOVE)
            self._source.destroy()
            self._loop.quit()
            return False

        idle = GLib.idle_source_new()
        idle.set_callback(shutdown)
        idle.attach(self._context)
        self._thread.join(5.0)
        self._thread = None
        self._server = self._source = None
        gc.collect()  # drop the last references to the listening socket

    def __enter__(self) -> RtspTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
