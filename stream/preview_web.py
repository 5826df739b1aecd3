"""The preview's HTTP and WebSocket server (Tornado), for :mod:`stream.preview`.

Everything here runs on one thread with its own asyncio event loop, except the JPEG and
zlib encoding, which runs on one encoder thread (OpenCV and zlib release the GIL) so that
the loop keeps answering while a frame is encoded. Once per preview period the loop
takes the newest shot of every camera that has a viewer, encodes it once and offers the
message to each of that camera's viewers; a viewer whose previous message is still being
written skips it (so a slow browser costs nothing but its own frames) and one stuck for
``STUCK_CLOSE_S`` is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tornado.httpserver
import tornado.web
import tornado.websocket
from tornado.escape import json_encode, url_escape

from stream.preview import encode_view, snapshot_jpeg
from stream.web_guard import host_allowed

if TYPE_CHECKING:
    from stream.preview import Preview, PreviewTap, Shot

log = logging.getLogger("segstream.preview")

HERE = Path(__file__).parent
MAX_VIEWERS = 32  # WebSocket viewers over all cameras; more are refused (503)
SNAPSHOT_WATCH_S = 5.0  # a snapshot request keeps its camera watched this long
STATUS_INTERVAL_S = 1.0
STUCK_CLOSE_S = 15.0  # a viewer whose message has not been written for this long is closed
SNAPSHOT_WAIT_S = 2.0  # how long a snapshot request waits for a camera's first shot
CSP = ("default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")


def _fps(ticks: deque[float], horizon_s: float = 2.0) -> float:
    """Rate of the monotonic times in ``ticks`` over the last ``horizon_s`` seconds."""
    now = time.monotonic()
    recent = [t for t in ticks if t >= now - horizon_s]
    return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and \
        recent[-1] > recent[0] else 0.0


class PreviewServer:
    """Serves one :class:`~stream.preview.Preview`; :meth:`start` and :meth:`close` are
    called from the runner's thread, everything else on the server's own loop."""

    def __init__(self, preview: Preview, tap: PreviewTap,
                 status: Callable[[], Mapping[str, dict[str, Any]]]) -> None:
        self.preview = preview
        self.cfg = preview.cfg
        self.tap = tap
        self.status = status
        self.viewers: dict[str, set[ViewerSocket]] = {c: set() for c in preview.cameras}
        self.snapshot_until: dict[str, float] = {}
        self._snapshots: dict[str, tuple[tuple[int, float, int], bytes]] = {}
        self._encoded_version: dict[str, int] = {}
        self._ticks: dict[str, deque[float]] = {c: deque(maxlen=64) for c in preview.cameras}
        self.encode_ns: deque[int] = deque(maxlen=256)
        self.encoded = dict.fromkeys(preview.cameras, 0)  # stream frames encoded per camera
        self.skipped = dict.fromkeys(preview.cameras, 0)  # frames a busy viewer skipped
        self._loop_cpu_s = 0.0  # CPU seconds of the server thread, and of the encoder's
        self._encoder_cpu_s = 0.0
        self._cpu_mark = (0.0, time.monotonic())
        self.cpu_percent = 0.0  # both threads over the last status interval, % of one core
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="preview-encode")
        self._loop = asyncio.new_event_loop()
        self._closing = False
        self._wake: asyncio.Event | None = None  # set on close and when a viewer comes
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._status_failed = False
        self._thread = threading.Thread(target=self._main, name="preview", daemon=True)

    # ------------------------------------------------------------------ runner's side

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError("the preview server did not start within 10 s")
        if self._failed is not None:
            raise RuntimeError(f"the preview server failed to start: {self._failed}")

    def close(self) -> None:
        if self._thread.is_alive() and self._wake is not None:
            self._closing = True
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._wake.set)
            self._thread.join(timeout=5.0)
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------ server thread

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception as e:  # the preview must never take the pipeline down
            log.exception("preview server stopped: %s", e)
            self._failed = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._wake = asyncio.Event()
        server = tornado.httpserver.HTTPServer(
            make_app(self), idle_connection_timeout=60, body_timeout=10,
            max_body_size=4096, max_header_size=16 * 1024)
        server.add_sockets(self.preview.sockets)
        self._ready.set()
        try:
            await self._pump()
        finally:
            server.stop()
            for viewers in self.viewers.values():
                for v in list(viewers):
                    v.close()
            try:
                await asyncio.wait_for(server.close_all_connections(), 2.0)
            except asyncio.TimeoutError:
                log.info("preview: connections still open at exit")

    async def _pump(self) -> None:
        """Every ``1 / fps`` s: encode each watched camera's newest shot once and offer
        it to its viewers; every second, send each viewer its camera's figures."""
        assert self._wake is not None
        period = 1.0 / self.cfg.fps
        next_status = 0.0
        while not self._closing:
            t0 = time.monotonic()
            self._watch(t0)
            for cam, viewers in self.viewers.items():
                if viewers:
                    await self._push_frame(cam, viewers)
            if t0 >= next_status:
                next_status = t0 + STATUS_INTERVAL_S
                self._loop_cpu_s = time.thread_time()
                cpu, then = self._cpu_mark
                self._cpu_mark = (self.cpu_s, t0)
                self.cpu_percent = 100 * (self.cpu_s - cpu) / max(t0 - then, 1e-3)
                self._push_status()
            for viewers in self.viewers.values():
                for v in list(viewers):
                    v.close_if_stuck(t0)
            # nobody watching: wake once a second (figures), or when a viewer comes
            idle = not self.tap.watched
            delay = (STATUS_INTERVAL_S if idle else period) - (time.monotonic() - t0)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.001, delay))

    def _watch(self, now: float) -> None:
        wanted = {c for c, v in self.viewers.items() if v}
        wanted |= {c for c, until in self.snapshot_until.items() if until > now}
        if wanted != self.tap.watched:
            self.tap.watch(frozenset(wanted))

    async def _push_frame(self, cam: str, viewers: set[ViewerSocket]) -> None:
        version, shot = self.tap.slots[cam].get()
        if shot is None or version == self._encoded_version.get(cam):
            return
        self._encoded_version[cam] = version
        t0 = time.perf_counter_ns()
        try:
            message = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._encode, shot)
        except Exception as e:  # a frame that cannot be encoded is skipped, not fatal
            log.warning("preview: cannot encode %s seq %d: %s", cam, shot.frame.seq, e)
            return
        self.encode_ns.append(time.perf_counter_ns() - t0)
        self._ticks[cam].append(time.monotonic())
        self.encoded[cam] += 1
        for v in list(viewers):
            v.offer(message, binary=True)

    def _encode(self, shot: Shot) -> bytes:
        """On the encoder thread: :func:`~stream.preview.encode_view`, and that thread's
        CPU time so far."""
        message = encode_view(shot, self.cfg.max_width, self.cfg.quality)
        self._encoder_cpu_s = time.thread_time()
        return message

    @property
    def cpu_s(self) -> float:
        """CPU seconds the preview's two threads have used (as of their last frame and
        status tick): what it costs, whatever else the machine runs."""
        return self._loop_cpu_s + self._encoder_cpu_s

    def preview_figures(self, cam: str) -> dict[str, Any]:
        enc = sorted(self.encode_ns)
        return {"viewers": len(self.viewers[cam]), "fps": round(_fps(self._ticks[cam]), 2),
                "frames": self.encoded[cam],
                "encode_ms": round(enc[len(enc) // 2] / 1e6, 2) if enc else None,
                "skipped": self.skipped[cam], "max_fps": self.cfg.fps,
                "cpu_percent": round(self.cpu_percent, 2), "cpu_s": round(self.cpu_s, 3)}

    def camera_figures(self) -> dict[str, dict[str, Any]]:
        """Every camera's :func:`~stream.preview.camera_status`; {} if it cannot be read."""
        try:
            return dict(self.status())
        except Exception as e:  # figures are optional; the frames keep coming
            if not self._status_failed:
                log.warning("preview: cannot read the pipeline's figures: %s", e)
                self._status_failed = True
            return {}

    def _push_status(self) -> None:
        if not any(self.viewers.values()):
            return
        figures = self.camera_figures()
        for cam, viewers in self.viewers.items():
            if viewers and cam in figures:
                text = json.dumps({"type": "status", "camera": figures[cam],
                                   "preview": self.preview_figures(cam)})
                for v in list(viewers):
                    v.offer(text, binary=False)

    async def snapshot(self, cam: str, opacity: float, width: int) -> bytes | None:
        """The newest shot of ``cam`` blended at ``opacity``, as JPEG (cached per shot);
        None if no shot came within ``SNAPSHOT_WAIT_S``."""
        now = time.monotonic()
        self.snapshot_until[cam] = now + SNAPSHOT_WATCH_S
        self._watch(now)
        deadline = now + SNAPSHOT_WAIT_S
        version, shot = self.tap.slots[cam].get()
        while shot is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            version, shot = self.tap.slots[cam].get()
        if shot is None:
            return None
        key = (version, opacity, width)
        cached = self._snapshots.get(cam)
        if cached is not None and cached[0] == key:
            return cached[1]
        jpeg = await asyncio.get_running_loop().run_in_executor(
            self._pool, snapshot_jpeg, shot, self.preview.palette, opacity, width,
            self.cfg.quality)
        self._snapshots[cam] = (key, jpeg)
        return jpeg

    def add_viewer(self, viewer: ViewerSocket) -> None:
        self.viewers[viewer.camera].add(viewer)
        self._watch(time.monotonic())
        if self._wake is not None:
            self._wake.set()

    def remove_viewer(self, viewer: ViewerSocket) -> None:
        self.viewers[viewer.camera].discard(viewer)
        self._watch(time.monotonic())


class _Base(tornado.web.RequestHandler):
    def initialize(self, server: PreviewServer) -> None:
        self.server = server

    def prepare(self) -> None:
        if not host_allowed(self.request.host_name, self.server.cfg.host):
            raise tornado.web.HTTPError(403, reason="unknown host name")
        # Another site's page (an <img> of /camera/X/snapshot.jpg) must not make the
        # vehicle encode frames for it: browsers say where a request comes from. A link
        # from another site (a fleet dashboard) is a navigation, and stays allowed.
        h = self.request.headers
        if h.get("Sec-Fetch-Site", "").lower() == "cross-site" and not (
                h.get("Sec-Fetch-Mode", "").lower() == "navigate"
                and h.get("Sec-Fetch-Dest", "document").lower() == "document"):
            raise tornado.web.HTTPError(403, reason="cross-site request")

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")

    def camera(self, camera: str) -> str:
        if camera not in self.server.viewers:
            raise tornado.web.HTTPError(404, reason="no such camera")
        return camera

    def page_args(self) -> dict[str, Any]:
        spec = self.server.preview.spec
        return {"model": spec.name, "fps": f"{self.server.cfg.fps:g}",
                "path_of": lambda cam: "/camera/" + url_escape(cam, plus=False)}


class IndexHandler(_Base):
    def get(self) -> None:
        self.render("index.html", cameras=self.server.preview.cameras, **self.page_args())


class CameraHandler(_Base):
    def get(self, camera: str) -> None:
        cam = self.camera(camera)
        classes = self.server.preview.spec.classes
        self.render("camera.html", camera=cam, classes=classes,
                    classes_json=json_encode([{"id": c.id, "name": c.name, "color": c.color}
                                              for c in classes]),
                    **self.page_args())


class StatusHandler(_Base):
    def get(self) -> None:
        figures = self.server.camera_figures()
        spec = self.server.preview.spec
        self.write({"model": spec.name,
                    "classes": [{"id": c.id, "name": c.name, "color": c.color}
                                for c in spec.classes],
                    "cameras": [{**figures.get(cam, {"camera": cam}),
                                 "preview": self.server.preview_figures(cam)}
                                for cam in self.server.preview.cameras]})


class SnapshotHandler(_Base):
    async def get(self, camera: str) -> None:
        cam = self.camera(camera)
        try:
            opacity = float(self.get_argument("opacity", "0.5"))
            width = int(self.get_argument("width", str(self.server.cfg.max_width)))
        except ValueError:
            raise tornado.web.HTTPError(400, reason="opacity is 0..1, width in pixels") from None
        if not 0.0 <= opacity <= 1.0 or width < 16:
            raise tornado.web.HTTPError(400, reason="opacity is 0..1, width >= 16")
        jpeg = await self.server.snapshot(cam, round(opacity, 2),
                                          min(width, self.server.cfg.max_width))
        if jpeg is None:
            raise tornado.web.HTTPError(503, reason="no frame from this camera yet")
        self.set_header("Content-Type", "image/jpeg")
        self.write(jpeg)


def _retrieve(done: asyncio.Future[None]) -> None:
    """Mark a write's outcome as seen: a closed connection is handled by ``on_close``."""
    if not done.cancelled():
        done.exception()


class ViewerSocket(tornado.websocket.WebSocketHandler):
    """One browser watching one camera: gets frames and figures, sends nothing."""

    def initialize(self, server: PreviewServer) -> None:
        self.server = server
        self.camera = ""
        self.busy_since: float | None = None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        camera = args[0] if args else ""
        if not host_allowed(self.request.host_name, self.server.cfg.host):
            raise tornado.web.HTTPError(403, reason="unknown host name")
        if camera not in self.server.viewers:
            raise tornado.web.HTTPError(404, reason="no such camera")
        if sum(len(v) for v in self.server.viewers.values()) >= MAX_VIEWERS:
            raise tornado.web.HTTPError(503, reason=f"{MAX_VIEWERS} viewers already")
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        self.camera = args[0]
        self.server.add_viewer(self)

    def on_message(self, message: str | bytes) -> None:
        pass  # viewers have nothing to say; the size limit bounds what they may send

    def on_close(self) -> None:
        if self.camera:
            self.server.remove_viewer(self)

    def offer(self, message: bytes | str, *, binary: bool) -> None:
        """Send a frame unless the previous one is still being written (then it is
        skipped and counted: newest wins, nothing queues up for a slow browser). Figures
        (text, about 1 kB a second) are always sent; a viewer that reads nothing at all
        is closed after ``STUCK_CLOSE_S``, which bounds what they add up to."""
        if binary and self.busy_since is not None:
            self.server.skipped[self.camera] += 1
            return
        try:
            done = self.write_message(message, binary=binary)
        except tornado.websocket.WebSocketClosedError:
            return
        if binary:
            self.busy_since = time.monotonic()
            done.add_done_callback(self._written)
        else:
            done.add_done_callback(_retrieve)

    def _written(self, done: asyncio.Future[None]) -> None:
        self.busy_since = None
        _retrieve(done)

    def close_if_stuck(self, now: float) -> None:
        if self.busy_since is not None and now - self.busy_since > STUCK_CLOSE_S:
            log.info("preview: closing a viewer of %s that reads nothing", self.camera)
            self.close()


def make_app(server: PreviewServer) -> tornado.web.Application:
    arg = {"server": server}
    cam = r"([^/]+)"
    return tornado.web.Application(
        [(r"/", IndexHandler, arg),
         (r"/api/status", StatusHandler, arg),
         (rf"/camera/{cam}/ws", ViewerSocket, arg),
         (rf"/camera/{cam}/snapshot\.jpg", SnapshotHandler, arg),
         (rf"/camera/{cam}/?", CameraHandler, arg)],
        template_path=str(HERE / "preview_templates"),
        static_path=str(HERE / "preview_static"),
        websocket_max_message_size=4096, websocket_ping_interval=10,
        websocket_ping_timeout=10, compress_response=False, autoreload=False,
        xsrf_cookies=False)
