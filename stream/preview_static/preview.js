"use strict";
// segstream preview. The camera page draws each frame with its label map laid over it
// (message layout: the docstring of stream/preview.py); the index polls /api/status.
// Everything from the server is put in the page as text (textContent), never as HTML.

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

function setState(el, state) {
  el.textContent = state;
  el.className = "state state-" + state;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function cameraPage(root) {
  const classes = JSON.parse($("classes").textContent);
  const lut = new Uint32Array(256); // class id -> RGBA as one little-endian word
  for (const c of classes) {
    lut[c.id] = ((0xff << 24) | (c.color[2] << 16) | (c.color[1] << 8) | c.color[0]) >>> 0;
  }
  const names = new Map(classes.map((c) => [c.id, c.name]));
  const shares = new Map([...document.querySelectorAll("#legend li")]
    .map((li) => [Number(li.dataset.id), li.querySelector(".share")]));
  const view = $("view");
  const g = view.getContext("2d");
  const mask = document.createElement("canvas");
  const mg = mask.getContext("2d");
  const slider = $("opacity");
  const banner = $("banner");
  let opacity = slider.value / 100;
  let shown = null; // {bitmap, ids, width, height}
  let busy = false;
  let waiting = null; // newest message not yet drawn (older ones are dropped)
  let drawn = 0;
  let connected = false; // the socket is open (a frame decoded after a close must not
  // clear the "disconnected" banner)
  let since = performance.now();

  function say(text) {
    banner.textContent = text;
    banner.hidden = !text;
  }

  function draw() {
    if (!shown) return;
    g.globalAlpha = 1;
    g.drawImage(shown.bitmap, 0, 0);
    g.globalAlpha = opacity;
    g.drawImage(mask, 0, 0);
    g.globalAlpha = 1;
  }

  async function inflate(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function show(buf) {
    const n = new DataView(buf).getUint32(0);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    const jpeg = new Blob([new Uint8Array(buf, 4 + n, head.jpeg)], { type: "image/jpeg" });
    const [bitmap, ids] = await Promise.all([
      createImageBitmap(jpeg), inflate(new Uint8Array(buf, 4 + n + head.jpeg))]);
    const w = head.width;
    const h = head.height;
    if (ids.length !== w * h) throw new Error(`${ids.length} class ids for ${w}x${h}`);
    if (view.width !== w || view.height !== h) {
      view.width = mask.width = w;
      view.height = mask.height = h;
    }
    const img = mg.createImageData(w, h);
    const px = new Uint32Array(img.data.buffer);
    const counts = new Uint32Array(256);
    for (let i = 0; i < ids.length; i++) {
      px[i] = lut[ids[i]];
      counts[ids[i]]++;
    }
    mg.putImageData(img, 0, 0);
    if (shown) shown.bitmap.close();
    shown = { bitmap, ids, width: w, height: h };
    for (const [id, el] of shares) el.textContent = (100 * counts[id] / ids.length).toFixed(1) + " %";
    $("seq").textContent = head.seq;
    draw();
    drawn++;
  }

  async function pump(buf) {
    if (busy) {
      waiting = buf;
      return;
    }
    busy = true;
    try {
      await show(buf);
      if (connected && banner.textContent) say(""); // drawn while connected: all is well
    } catch (e) {
      say("cannot draw a frame: " + e.message);
    }
    busy = false;
    if (waiting) {
      const next = waiting;
      waiting = null;
      pump(next);
    }
  }

  function status(s) {
    const c = s.camera;
    setState($("state"), c.state);
    $("detail").textContent = c.detail || "";
    $("fps").textContent = fmt(c.fps);
    $("published").textContent = c.published;
    $("dropped").textContent = c.dropped;
    $("handoff-dropped").textContent = c.handoff_dropped;
    $("engine").textContent = c.engine ? c.engine.describe : "–";
    $("reconnects").textContent = c.reconnects;
    $("viewers").textContent = s.preview.viewers;
    root.classList.toggle("stale", c.state !== "running");
    const rows = Object.keys(c.stages).map((k) => { // in the pipeline's order
      const tr = document.createElement("tr");
      tr.append(cell(k), cell(fmt(c.stages[k].p50)), cell(fmt(c.stages[k].p99)));
      return tr;
    });
    const preview = document.createElement("tr");
    preview.append(cell("preview encode"), cell(fmt(s.preview.encode_ms, 2)), cell(""));
    $("preview-cpu").textContent = fmt(s.preview.cpu_percent);
    $("stages").tBodies[0].replaceChildren(...rows, preview);
  }

  function connect() {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") +
                             location.host + root.dataset.ws);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      connected = true;
    };
    ws.onmessage = (ev) => (typeof ev.data === "string" ? status(JSON.parse(ev.data)) : pump(ev.data));
    ws.onclose = () => {
      connected = false;
      say("disconnected from segstream; reconnecting…");
      setTimeout(connect, 1000);
    };
  }

  slider.addEventListener("input", () => {
    opacity = slider.value / 100;
    $("opacity-out").textContent = slider.value + " %";
    draw();
  });
  view.addEventListener("mousemove", (ev) => {
    if (!shown) return;
    const r = view.getBoundingClientRect();
    const x = Math.floor((ev.clientX - r.left) * shown.width / r.width);
    const y = Math.floor((ev.clientY - r.top) * shown.height / r.height);
    if (x >= 0 && y >= 0 && x < shown.width && y < shown.height) {
      $("hover").textContent = names.get(shown.ids[y * shown.width + x]) ?? "";
    }
  });
  view.addEventListener("mouseleave", () => { $("hover").textContent = ""; });
  setInterval(() => {
    const now = performance.now();
    $("view-fps").textContent = fmt(drawn * 1000 / (now - since));
    drawn = 0;
    since = now;
  }, 2000);
  connect();
}

function indexPage(list) {
  const cards = new Map([...list.querySelectorAll(".card")].map((li) => [li.dataset.camera, li]));

  async function poll() {
    let s;
    try {
      s = await (await fetch("/api/status", { cache: "no-store" })).json();
    } catch (e) {
      return; // segstream stopped or restarting: keep the last figures
    }
    for (const c of s.cameras) {
      const li = cards.get(c.camera);
      if (!li || !c.state) continue;
      setState(li.querySelector(".state"), c.state);
      li.querySelector(".fps").textContent = fmt(c.fps);
      li.querySelector(".dropped").textContent = c.dropped;
      li.querySelector(".detail").textContent = c.detail || "";
    }
  }

  async function thumbnail(img) {
    try {
      const r = await fetch(img.dataset.src, { cache: "no-store" });
      if (!r.ok) return;
      const old = img.src;
      img.src = URL.createObjectURL(await r.blob());
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    } catch (e) {
      // no frame yet, or segstream stopped: try again next round
    }
  }

  async function thumbnails() {
    for (const li of cards.values()) await thumbnail(li.querySelector("img"));
    setTimeout(thumbnails, 2000);
  }

  poll();
  setInterval(poll, 1000);
  thumbnails();
}

const viewer = document.querySelector(".viewer");
const cameras = document.querySelector(".cameras");
if (viewer) cameraPage(viewer);
else if (cameras) indexPage(cameras);
