// The live pages: /live/ lists the sensors, /live/<sensor_id> draws one sensor's
// frames as they are committed. Everything comes from this origin's /v1 API; with
// API keys, the key is asked for once and kept in this tab's sessionStorage.
// EventSource cannot send an Authorization header, so the stream is read with
// fetch() and parsed here, Last-Event-ID sent again on every reconnect.
"use strict";

(() => {
  const KEY = "soundstream.key";
  const API = new URL("../v1/", location.href);
  const FIELDS = "rms,centroid,dominant_hz,mel";
  const HISTORY = 20; // chunks drawn at once when the page opens
  const SILENT_AFTER_S = 3;
  const DB_RANGE = 80;
  const LINES = ["rms", "centroid", "dominant_hz"];

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const statusLine = $("status");
  let keyEntered = null;

  // What the page did, for people (the status line) and for tests.
  const state = {
    status: "", events: 0, seqs: [], lastId: null, frames: 0, columns: 0,
    connects: 0, missed: [], closes: [], sensors: 0,
  };
  window.soundstreamLive = state;

  function setStatus(text, kind) {
    statusLine.textContent = text;
    statusLine.className = "status " + (kind || "");
    state.status = text;
  }

  function headers(extra) {
    const all = Object.assign({}, extra);
    const key = sessionStorage.getItem(KEY);
    if (key) all.Authorization = "Bearer " + key;
    return all;
  }

  function askKey(message) {
    const form = $("key-form");
    form.hidden = false;
    setStatus(message, "bad");
    $("key").focus();
    if (!keyEntered) {
      keyEntered = new Promise((resolve) => {
        form.addEventListener("submit", (event) => {
          event.preventDefault();
          const value = $("key").value.trim();
          if (!value) return;
          sessionStorage.setItem(KEY, value);
          form.hidden = true;
          keyEntered = null;
          resolve();
        }, { once: true });
      });
    }
    return keyEntered;
  }

  function retryAfter(response, fallback) {
    const seconds = Number(response.headers.get("Retry-After"));
    return (Number.isFinite(seconds) && seconds > 0 ? seconds : fallback) * 1000;
  }

  async function getJSON(url) {
    for (;;) {
      const response = await fetch(url, { headers: headers({ Accept: "application/json" }) });
      if (response.status === 401) {
        await askKey("this API needs a key (401)");
        continue;
      }
      if (response.status === 429 || response.status === 503) {
        await sleep(retryAfter(response, 1));
        continue;
      }
      if (!response.ok) throw new Error("HTTP " + response.status + " from " + url.pathname);
      return response.json();
    }
  }

  // --- /live/: the sensors ----------------------------------------------------------

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function cell(text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    return td;
  }

  async function listSensors() {
    setStatus("loading");
    const sensors = [];
    let cursor = null;
    do {
      const url = new URL("sensors", API);
      if (cursor) url.searchParams.set("cursor", cursor);
      const page = await getJSON(url);
      sensors.push(...page.sensors);
      cursor = page.next;
    } while (cursor);
    const body = document.querySelector("#sensors tbody");
    const rows = sensors.map((sensor) => {
      const tr = document.createElement("tr");
      const link = document.createElement("a");
      link.href = encodeURIComponent(sensor.sensor_id);
      link.textContent = sensor.sensor_id;
      const name = document.createElement("td");
      name.append(link);
      const seen = cell("…");
      const gaps = cell("…", true);
      tr.append(name, seen, cell(sensor.chunks.toLocaleString(), true),
        cell(sensor.frames.toLocaleString(), true), gaps);
      return { sensor, seen, gaps, tr };
    });
    body.replaceChildren(...rows.map((row) => row.tr));
    state.sensors = sensors.length;
    setStatus(sensors.length + " sensors", "ok");
    // Last seen and gaps come from each sensor's status, a few requests at a time.
    let next = 0;
    async function worker() {
      while (next < rows.length) {
        const row = rows[next++];
        const id = encodeURIComponent(row.sensor.sensor_id);
        try {
          const status = await getJSON(new URL("sensors/" + id, API));
          row.seen.textContent = ago(status.last_received_at);
          row.seen.title = status.last_received_at;
          const missing = status.missing_seq.reduce((n, [a, b]) => n + b - a + 1, 0);
          const capped = status.missing_seq.length >= 1000 ? "+" : "";
          row.gaps.textContent = missing
            ? missing.toLocaleString() + capped + " missing in " + status.missing_seq.length
              + capped + " gaps"
            : "none";
        } catch (error) {
          row.gaps.textContent = "?";
        }
      }
    }
    await Promise.all([worker(), worker(), worker(), worker()]);
  }

  async function sensorsPage() {
    $("refresh").addEventListener("click", () => listSensors().catch(showError));
    await listSensors();
    setInterval(() => listSensors().catch(showError), 30000);
  }

  function showError(error) {
    setStatus(String(error.message || error), "bad");
  }

  // --- /live/<sensor_id>: one sensor ---------------------------------------------------

  // A viridis-like colour map: matplotlib's viridis at eleven stops, interpolated.
  const STOPS = [
    [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142],
    [33, 145, 140], [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38],
    [253, 231, 37],
  ];
  const LUT = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (STOPS.length - 1);
    const k = Math.min(STOPS.length - 2, Math.floor(x));
    const t = x - k;
    for (let c = 0; c < 3; c++) {
      LUT[i * 3 + c] = STOPS[k][c] + (STOPS[k + 1][c] - STOPS[k][c]) * t;
    }
  }

  class Spectrogram {
    constructor(canvas, axis) {
      this.canvas = canvas;
      this.ctx = canvas.getContext("2d");
      this.axis = axis.getContext("2d");
      this.width = canvas.width;
      this.height = canvas.height;
      this.times = new Float64Array(this.width).fill(NaN); // ms of each column
      this.top = -Infinity; // the loudest dB seen, slowly forgotten
      this.ctx.fillStyle = "#111";
      this.ctx.fillRect(0, 0, this.width, this.height);
    }

    add(frames) {
      const n = Math.min(frames.length, this.width);
      if (!n) return;
      const shown = frames.slice(frames.length - n);
      let loudest = -Infinity;
      const dbs = shown.map((frame) => frame.mel.map((v) => {
        const db = 10 * Math.log10(Math.max(v, 1e-12));
        if (db > loudest) loudest = db;
        return db;
      }));
      this.top = Math.max(loudest, this.top - 0.5);
      // Scroll left by n columns, then draw the new ones at the right.
      this.ctx.drawImage(this.canvas, -n, 0);
      this.times.copyWithin(0, n);
      const image = this.ctx.createImageData(n, this.height);
      const floor = this.top - DB_RANGE;
      for (let j = 0; j < n; j++) {
        const bands = dbs[j];
        this.times[this.width - n + j] = Date.parse(shown[j].ts);
        for (let y = 0; y < this.height; y++) {
          const band = Math.min(bands.length - 1,
            Math.floor(((this.height - 1 - y) * bands.length) / this.height));
          const level = Math.max(0, Math.min(1, (bands[band] - floor) / DB_RANGE));
          const at = Math.round(level * 255) * 3;
          const p = (y * n + j) * 4;
          image.data[p] = LUT[at];
          image.data[p + 1] = LUT[at + 1];
          image.data[p + 2] = LUT[at + 2];
          image.data[p + 3] = 255;
        }
      }
      this.ctx.putImageData(image, this.width - n, 0);
      state.columns = Math.min(this.width, state.columns + n);
      this.drawAxis();
      $("scale").textContent = "(" + Math.round(floor) + " to " + Math.round(this.top) + " dB)";
    }

    drawAxis() {
      const ctx = this.axis;
      const width = this.width;
      ctx.clearRect(0, 0, width, 22);
      const first = this.times.findIndex((t) => !Number.isNaN(t));
      if (first < 0) return;
      const span = (this.times[width - 1] - this.times[first]) / 1000;
      const perPixel = span / Math.max(1, width - first);
      const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].find((s) => s / perPixel >= 90) || 600;
      ctx.fillStyle = getComputedStyle(document.body).color;
      ctx.strokeStyle = ctx.fillStyle;
      ctx.font = "11px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      let last = null;
      for (let x = first; x < width; x++) {
        const bucket = Math.floor(this.times[x] / 1000 / step);
        if (last !== null && bucket !== last) {
          ctx.beginPath();
          ctx.moveTo(x + 0.5, 0);
          ctx.lineTo(x + 0.5, 5);
          ctx.stroke();
          const label = new Date(bucket * step * 1000).toISOString().slice(11, 19);
          if (x > 24 && x < width - 24) ctx.fillText(label, x, 7);
        }
        last = bucket;
      }
    }
  }

  class Line {
    constructor(name) {
      this.name = name;
      this.canvas = $(name);
      this.ctx = this.canvas.getContext("2d");
      this.values = new Float64Array(this.canvas.width).fill(NaN);
    }

    add(frames) {
      const n = Math.min(frames.length, this.values.length);
      if (!n) return;
      this.values.copyWithin(0, n);
      for (let j = 0; j < n; j++) {
        this.values[this.values.length - n + j] = frames[frames.length - n + j][this.name];
      }
      this.draw();
      const latest = this.values[this.values.length - 1];
      $(this.name + "-value").textContent =
        this.name === "rms" ? latest.toFixed(4) : Math.round(latest) + " Hz";
    }

    draw() {
      const { ctx, values } = this;
      const { width, height } = this.canvas;
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of values) {
        if (Number.isNaN(v)) continue;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      ctx.clearRect(0, 0, width, height);
      if (!Number.isFinite(lo)) return;
      const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
      lo -= pad;
      hi += pad;
      ctx.strokeStyle = "#7ad151";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let drawing = false;
      for (let x = 0; x < width; x++) {
        const v = values[x];
        if (Number.isNaN(v)) {
          drawing = false;
          continue;
        }
        const y = height - ((v - lo) / (hi - lo)) * height;
        if (drawing) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        drawing = true;
      }
      ctx.stroke();
      ctx.fillStyle = "#ccc";
      ctx.font = "10px system-ui, sans-serif";
      ctx.fillText(hi.toPrecision(3), 3, 10);
      ctx.fillText(lo.toPrecision(3), 3, height - 3);
    }
  }

  // Server-Sent Events from a fetch() body: blocks end at a blank line; "field: value"
  // lines; a line starting with ":" is a comment (the server's keep-alive).
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = { event: "message", data: [], id: null };
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "data") event.data.push(text);
          else if (field === "event") event.event = text;
          else if (field === "id") event.id = text;
        }
        if (event.id !== null || event.data.length) onEvent(event);
      }
    }
  }

  async function livePage() {
    const sensorId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    document.title = sensorId + " · soundstream live";
    $("sensor").textContent = sensorId;
    const spectrogram = new Spectrogram($("mel"), $("mel-axis"));
    const lines = LINES.map((name) => new Line(name));
    let connected = false;
    let lastEventAt = null;

    function onEvent(event) {
      if (event.id !== null) state.lastId = event.id;  // "17", or "17;12-14" with holes
      const data = event.data.length ? JSON.parse(event.data.join("\n")) : null;
      if (event.event === "chunk") {
        state.events += 1;
        state.seqs.push(data.seq);
        state.frames += data.frames.length;
        lastEventAt = Date.now();
        spectrogram.add(data.frames);
        for (const line of lines) line.add(data.frames);
        $("counts").textContent = "chunk " + data.seq + " · " + state.events + " chunks, "
          + state.frames.toLocaleString() + " frames since the page opened";
        setStatus("connected", "ok");
      } else if (event.event === "missed") {
        state.missed.push(data);
      } else if (event.event === "close") {
        state.closes.push(data.reason);
      }
    }

    setInterval(() => {
      if (!connected) return;
      const since = lastEventAt === null ? null : (Date.now() - lastEventAt) / 1000;
      if (since === null || since >= SILENT_AFTER_S) {
        const silent = since === null ? "no chunk yet" : "silent for " + Math.round(since) + " s";
        setStatus("connected · sensor " + silent, "warn");
      }
    }, 1000);

    let delay = 1000;
    for (;;) {
      const url = new URL("sensors/" + encodeURIComponent(sensorId) + "/live", API);
      url.searchParams.set("fields", FIELDS);
      const asked = { Accept: "text/event-stream" };
      if (state.lastId === null) url.searchParams.set("history", HISTORY);
      else asked["Last-Event-ID"] = String(state.lastId);
      let wait = delay;
      try {
        const response = await fetch(url, { headers: headers(asked), cache: "no-store" });
        if (response.status === 401) {
          await askKey("this API needs a key (401)");
          continue;
        }
        if (response.status === 404) {
          setStatus("unknown sensor (404): it has sent no audio; trying again", "bad");
          await sleep(5000);
          continue;
        }
        if (response.status === 429 || response.status === 503) {
          wait = retryAfter(response, delay / 1000);
          throw new Error("busy (" + response.status + ")");
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        connected = true;
        state.connects += 1;
        delay = 1000;
        setStatus("connected", "ok");
        await readEvents(response.body, onEvent);
        throw new Error("the stream ended");
      } catch (error) {
        connected = false;
        const why = String(error.message || error);
        setStatus("reconnecting in " + Math.round(wait / 1000) + " s (" + why + ")", "warn");
        await sleep(wait);
        delay = Math.min(delay * 2, 10000);
      }
    }
  }

  const page = document.body.dataset.page;
  (page === "live" ? livePage() : sensorsPage()).catch(showError);
})();
