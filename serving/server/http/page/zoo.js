// The deepr zoo page: everything through the server's V2 REST endpoint, nothing else.
// Pictures are preprocessed here exactly as deepr's Python clients do (Pillow's grey
// conversion, its bilinear resize, the scale/mean/std the export carries), then sent as
// binary tensor data.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("deepr-token") || "";
let repository = []; // the repository index
let current = null; // the chosen model: {name, config, metadata, kind}
let statsTimer = null;

// ---------------------------------------------------------------- talking to the server

class ServerError extends Error {}

async function call(method, path, body, headers = {}) {
  const sent = { ...headers };
  if (token) sent.Authorization = "Bearer " + token;
  let response;
  try {
    response = await fetch(path, { method, body, headers: sent });
  } catch (err) {
    throw new ServerError(`the server does not answer (${err.message}): is deepr serve still running?`);
  }
  if (response.status === 401) $("token-form").hidden = false;
  if (!response.ok) {
    let message = `${method} ${path} answered HTTP ${response.status}`;
    try {
      const answer = await response.json();
      if (answer.error) message = answer.error;
    } catch (_) { /* no JSON body: keep the status line */ }
    throw new ServerError(message);
  }
  return response;
}

const getJSON = async (path) => (await call("GET", path)).json();
const postJSON = async (path, doc) =>
  (await call("POST", path, JSON.stringify(doc), { "Content-Type": "application/json" })).json();
const modelPath = (name) => `/v2/models/${encodeURIComponent(name)}`;

const TYPED = { FP32: Float32Array, FP64: Float64Array, INT32: Int32Array, UINT8: Uint8Array, INT8: Int8Array, INT64: BigInt64Array };

// One inference: typed-array inputs travel as binary data, outputs come back binary unless
// they are class strings (the classification extension answers BYTES).
async function infer(model, inputs, outputs) {
  const header = { inputs: [], outputs };
  const parts = [];
  for (const t of inputs) {
    header.inputs.push({ name: t.name, datatype: t.datatype, shape: t.shape, parameters: { binary_data_size: t.data.byteLength } });
    parts.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const response = await call("POST", modelPath(model) + "/infer", new Blob([json, ...parts]), {
    "Inference-Header-Content-Length": String(json.length),
    "Content-Type": "application/octet-stream",
  });
  const bytes = new Uint8Array(await response.arrayBuffer());
  const jsonLength = Number(response.headers.get("Inference-Header-Content-Length") || bytes.length);
  const answer = JSON.parse(new TextDecoder().decode(bytes.subarray(0, jsonLength)));
  const result = {};
  let offset = jsonLength;
  for (const out of answer.outputs) {
    const size = out.parameters && out.parameters.binary_data_size;
    if (size === undefined) {
      result[out.name] = { shape: out.shape, data: out.data };
      continue;
    }
    const buffer = bytes.slice(offset, offset + size).buffer;
    offset += size;
    const values = new TYPED[out.datatype](buffer);
    result[out.name] = { shape: out.shape, data: out.datatype === "INT64" ? Array.from(values, Number) : values };
  }
  return result;
}

// ---------------------------------------------------------------- messages

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

async function guarded(work) {
  clearError();
  try {
    await work();
  } catch (err) {
    showError(err instanceof ServerError ? err.message : `${err.name}: ${err.message}`);
  }
}

// ---------------------------------------------------------------- pictures as the models take them

function parameter(config, key) {
  const p = (config.parameters || {})[key];
  return p ? p.string_value : undefined;
}

// The layers a feature graph exposes: deepr.layers (JSON), or the comma list of
// repositories exported before the config carried the metadata's own keys.
function layersOf(config) {
  const layers = parameter(config, "deepr.layers");
  if (layers) return JSON.parse(layers);
  const legacy = parameter(config, "deepr.features.layers");
  return legacy ? legacy.split(",") : undefined;
}

function readPicture(file) {
  return new Promise((resolve, reject) => {
    if (!file) return reject(new ServerError("choose a picture first"));
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new ServerError(`${file.name || "the drawing"} is not a picture the browser can read (PNG, JPEG, GIF, WebP...)`));
    image.src = url;
  });
}

function pixelsOf(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth || image.width;
  canvas.height = image.naturalHeight || image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  return context.getImageData(0, 0, canvas.width, canvas.height).data; // RGBA
}

// Pillow's convert("L"): ITU-R 601-2 luma in fixed point.
function grey(rgba, count) {
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    out[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
  }
  return out;
}

// ImagePreprocessing.inverts: a dark-background model inverts pictures whose outer ring is light.
function borderIsLight(plane, width, height) {
  const ring = Math.max(1, Math.floor(Math.min(width, height) / 10));
  let sum = 0, count = 0;
  const add = (x, y) => { sum += plane[y * width + x]; count++; };
  for (let y = 0; y < ring; y++) for (let x = 0; x < width; x++) { add(x, y); add(x, height - 1 - y); }
  for (let y = 0; y < height; y++) for (let x = 0; x < ring; x++) { add(x, y); add(width - 1 - x, y); }
  return sum / count > 127.5;
}

// Pillow's resize coefficients for a filter of support `support` (bilinear: 1), in its fixed point.
function coefficients(inSize, outSize, filter, support) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const reach = support * filterScale;
  const rows = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - reach + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + reach + 0.5), inSize);
    const weights = [];
    let total = 0;
    for (let x = xmin; x < xmax; x++) {
      const w = filter((x - center + 0.5) / filterScale);
      weights.push(w);
      total += w;
    }
    const fixed = weights.map((w) => {
      const k = total !== 0 ? w / total : 0;
      return Math.trunc(k * (1 << 22) + (k < 0 ? -0.5 : 0.5));
    });
    rows.push({ xmin, fixed });
  }
  return rows;
}

const FILTERS = {
  bilinear: [(x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; }, 1],
  nearest: null,
  bicubic: [(x) => {
    const a = -0.5; x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  }, 2],
};

function resample1d(plane, width, height, outWidth, filter, support) {
  const rows = coefficients(width, outWidth, filter, support);
  const out = new Uint8Array(outWidth * height);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < outWidth; xx++) {
      const { xmin, fixed } = rows[xx];
      let sum = 1 << 21;
      for (let i = 0; i < fixed.length; i++) sum += plane[y * width + xmin + i] * fixed[i];
      out[y * outWidth + xx] = Math.min(255, Math.max(0, Math.floor(sum / (1 << 22))));
    }
  }
  return out;
}

function transpose(plane, width, height) {
  const out = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) out[x * height + y] = plane[y * width + x];
  return out;
}

function resize(plane, width, height, outWidth, outHeight, method) {
  if (width === outWidth && height === outHeight) return plane;
  if (method === "nearest") {
    const out = new Uint8Array(outWidth * outHeight);
    for (let y = 0; y < outHeight; y++) {
      const sy = Math.min(height - 1, Math.floor((y + 0.5) * height / outHeight));
      for (let x = 0; x < outWidth; x++) out[y * outWidth + x] = plane[sy * width + Math.min(width - 1, Math.floor((x + 0.5) * width / outWidth))];
    }
    return out;
  }
  const [filter, support] = FILTERS[method];
  let p = plane, w = width;
  if (w !== outWidth) { p = resample1d(p, w, height, outWidth, filter, support); w = outWidth; }
  if (height !== outHeight) p = transpose(resample1d(transpose(p, w, height), height, w, outHeight, filter, support), outHeight, w);
  return p;
}

// mnistFrame and borderMedian: framing.js, loaded before this file.

// A picture as one example of the model's input: {tensor, inverted, placement}.
function preprocess(image, config) {
  const spec = JSON.parse(parameter(config, "deepr.preprocessing"));
  const width = image.naturalWidth || image.width, height = image.naturalHeight || image.height, count = width * height;
  const rgba = pixelsOf(image);
  const channels = spec.color_mode === "L" ? 1 : 3;
  let planes = [];
  if (channels === 1) planes.push(grey(rgba, count));
  else for (let c = 0; c < 3; c++) { const p = new Uint8Array(count); for (let i = 0; i < count; i++) p[i] = rgba[4 * i + c]; planes.push(p); }
  const inverted = spec.background === "dark" && borderIsLight(channels === 1 ? planes[0] : grey(rgba, count), width, height);
  if (inverted) planes = planes.map((p) => p.map((v) => 255 - v));
  const [outHeight, outWidth] = spec.size;
  let placement = null;
  if (spec.framing === "mnist" && channels === 1) {
    const framed = mnistFrame(planes[0], width, height, outWidth, outHeight);
    planes = [framed.plane];
    placement = framed.placement;
  } else {
    planes = planes.map((p) => resize(p, width, height, outWidth, outHeight, spec.resample));
  }
  const area = outWidth * outHeight;
  const input = config.input[0];
  const dims = input.dims.map(Number);
  const shape = config.max_batch_size > 0 ? [1, ...dims] : dims;
  if (spec.pixels !== "float32") { // uint8 graphs, and what an encoded graph's server makes of the file
    const data = new Uint8Array(area * channels);
    for (let i = 0; i < area; i++) for (let c = 0; c < channels; c++) data[i * channels + c] = planes[c][i];
    return { tensor: { name: input.name, datatype: "UINT8", shape, data }, inverted, placement };
  }
  const data = new Float32Array(area * channels);
  for (let c = 0; c < channels; c++) {
    const mean = spec.mean ? spec.mean[c] : 0, std = spec.std ? spec.std[c] : 1;
    for (let i = 0; i < area; i++) {
      const value = (planes[c][i] * spec.scale - mean) / std;
      data[spec.layout === "NCHW" ? c * area + i : i * channels + c] = value;
    }
  }
  return { tensor: { name: input.name, datatype: "FP32", shape, data }, inverted, placement };
}

// A picture file as the one BYTES element a model that decodes pictures on the server takes
// (deepr.preprocessing pixels "encoded"): its length, 4 bytes little-endian, then the file.
async function encodedPicture(file, config) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const data = new Uint8Array(4 + bytes.length);
  new DataView(data.buffer).setUint32(0, bytes.length, true);
  data.set(bytes, 4);
  return { name: config.input[0].name, datatype: "BYTES", shape: [1, 1], data };
}

function drawPicture(canvas, image) {
  canvas.width = image.naturalWidth || image.width;
  canvas.height = image.naturalHeight || image.height;
  canvas.getContext("2d").drawImage(image, 0, 0);
}

// ---------------------------------------------------------------- colour maps

const JET = [[0, 0, 0.5], [0, 0, 1], [0, 0.5, 1], [0, 1, 1], [0.5, 1, 0.5], [1, 1, 0], [1, 0.5, 0], [1, 0, 0], [0.5, 0, 0]];
const VIRIDIS = [[0.267, 0.005, 0.329], [0.283, 0.141, 0.458], [0.254, 0.265, 0.530], [0.207, 0.372, 0.553], [0.164, 0.471, 0.558],
  [0.128, 0.567, 0.551], [0.135, 0.659, 0.518], [0.267, 0.749, 0.441], [0.478, 0.821, 0.318], [0.741, 0.873, 0.150], [0.993, 0.906, 0.144]];

function colour(map, t) {
  const x = Math.min(1, Math.max(0, t)) * (map.length - 1);
  const i = Math.min(map.length - 2, Math.floor(x)), f = x - i;
  return map[i].map((v, k) => Math.round(255 * (v + (map[i + 1][k] - v) * f)));
}

// ---------------------------------------------------------------- the repository and one model

async function refreshRepository() {
  const meta = await getJSON("/v2");
  $("server-version").textContent = meta.version;
  const ready = (await call("GET", "/v2/health/ready").then(() => true, () => false));
  repository = await postJSON("/v2/repository/index", {});
  // not ready while models are still being built: say "building", a wait rather than a fault
  const building = !ready && repository.some((entry) => entry.state === "LOADING");
  $("server-state").textContent = ready ? "ready" : building ? "building" : "not ready";
  $("server-state").className = "badge " + (ready ? "ok" : building ? "busy" : "bad");
  const list = $("models");
  list.replaceChildren();
  for (const entry of repository) {
    const item = document.createElement("li");
    item.dataset.model = entry.name;
    const name = document.createElement("span");
    name.textContent = entry.name;
    const state = document.createElement("span");
    state.className = "state" + (entry.state === "READY" ? " ready" : "");
    const epoch = entry.state === "LOADING" && /epoch (\d+\/\d+)/.exec(entry.reason || "");
    state.textContent = entry.state === "READY" ? "ready" : entry.state.toLowerCase() + (epoch ? `, epoch ${epoch[1]}` : "");
    state.title = entry.reason || "";
    item.append(name, state);
    item.addEventListener("click", () => guarded(() => choose(entry.name)));
    list.append(item);
  }
}

function kindOf(config) {
  const outputs = config.output.map((o) => o.name);
  if (parameter(config, "deepr.charset") && config.input[0].name === "prompt") return "text";
  if (layersOf(config) && config.input[0].name === "images" && config.input.length === 1) return "features";
  if (parameter(config, "deepr.preprocessing") && outputs.length === 1 && config.input.length === 1) return "picture";
  return "other";
}

const served = (name) => repository.some((e) => e.name === name && e.state === "READY");

async function choose(name) {
  for (const li of $("models").children) li.classList.toggle("chosen", li.dataset.model === name);
  const [metadata, config] = await Promise.all([getJSON(modelPath(name)), getJSON(modelPath(name) + "/config")]);
  current = { name, metadata, config, kind: kindOf(config) };
  $("model").hidden = false;
  $("model-name").textContent = name;
  const section = parameter(config, "deepr.section");
  const labels = parameter(config, "deepr.labels");
  const names = labels ? JSON.parse(labels) : [];
  const shown = names.length > 20 ? `${names.slice(0, 20).join(", ")}, … (${names.length} in all)` : names.join(", ");
  const completed = parameter(config, "deepr.config_completed");
  $("model-section").textContent = [
    section ? `tutorial: ${section}` : "",
    names.length ? `labels: ${shown}` : "",
    completed ? `config completed from the graph (${completed})` : "",
  ].filter(Boolean).join(" · ");
  const body = $("model-tensors").tBodies[0];
  body.replaceChildren();
  for (const [role, tensors] of [["in", metadata.inputs], ["out", metadata.outputs]]) {
    for (const t of tensors) {
      const row = body.insertRow();
      for (const text of [role, t.name, t.datatype, `[${t.shape.join(", ")}]`]) row.insertCell().textContent = text;
    }
  }
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $(`${current.kind}-view`).hidden = false;
  if (current.kind === "features") {
    $("layer").replaceChildren(...layersOf(config).map((l) => new Option(l, l)));
  }
  $("pad-figure").hidden = !(current.kind === "picture" && padWanted(config));
  if (!$("pad-figure").hidden) clearPad();
  if (current.kind === "other") {
    $("other-note").textContent = "This graph is used from the command line or Python (deepr gradcam, dream, style, filters); " +
      "its inputs and outputs are listed above.";
  }
  $("top-classes").replaceChildren();
  $("gradcam-figure").hidden = true;
  delete $("gradcam").dataset.classIndex;
  $("texts").replaceChildren();
  await refreshStats();
  clearInterval(statsTimer);
  statsTimer = setInterval(() => refreshStats().catch(() => {}), 2000);
}

async function refreshStats() {
  if (!current) return;
  const stats = (await getJSON(modelPath(current.name) + "/stats")).model_stats;
  const s = stats.find((m) => m.version === current.metadata.versions.at(-1)) || stats[0];
  const success = s ? s.inference_stats.success : { count: 0, ns: 0 };
  const rows = {
    version: s ? s.version : "-",
    requests: success.count,
    failed: s ? s.inference_stats.fail.count : 0,
    "rows inferred": s ? s.inference_count : 0,
    "onnxruntime runs": s ? s.execution_count : 0,
    "mean latency": success.count ? `${(success.ns / success.count / 1e6).toFixed(2)} ms` : "-",
  };
  $("model-stats").replaceChildren(...Object.entries(rows).flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = String(v);
    return [dt, dd];
  }));
}

// ---------------------------------------------------------------- views

let picture = null; // {image, file, top: [{score, index, label}]}

async function classifyPicture(file) {
  await classifyImage(await readPicture(file), file);
}

// `file`: the picture's bytes (a File, or the drawing as a PNG Blob) for models that decode pictures on the server.
async function classifyImage(image, file) {
  const encoded = JSON.parse(parameter(current.config, "deepr.preprocessing")).pixels === "encoded";
  const { tensor, inverted, placement } = encoded
    ? { tensor: await encodedPicture(file, current.config), inverted: false, placement: undefined } // the server decodes
    : preprocess(image, current.config);
  drawPicture($("picture"), image);
  const framed = JSON.parse(parameter(current.config, "deepr.preprocessing")).framing === "mnist";
  const notes = [inverted ? "inverted: dark on light" : "", framed && placement === null ? "no digit found: the classes below are a guess" : ""];
  $("picture-note").textContent = notes.filter(Boolean).join("; ");
  const output = current.config.output[0].name;
  const logits = parameter(current.config, "deepr.outputs") === "logits";
  let top;
  if (logits) { // the model leaves out its softmax: the page applies it, and says so
    const result = await infer(current.name, [tensor], [{ name: output, parameters: { binary_data: true } }]);
    const values = Array.from(result[output].data, Number), peak = Math.max(...values);
    const exps = values.map((v) => Math.exp(v - peak)), total = exps.reduce((a, b) => a + b, 0);
    const labels = JSON.parse(parameter(current.config, "deepr.labels") || "[]");
    top = exps.map((e, index) => ({ score: e / total, index, label: labels[index] ?? String(index) }))
      .sort((a, b) => b.score - a.score).slice(0, 5);
  } else {
    const result = await infer(current.name, [tensor], [{ name: output, parameters: { classification: 5 } }]);
    top = result[output].data.map((text) => {
      const [score, index, ...label] = text.split(":");
      return { score: Number(score), index: Number(index), label: label.join(":") || index };
    });
  }
  if (logits) $("picture-note").textContent = [$("picture-note").textContent, "scores: softmax of the model's logits"].filter(Boolean).join("; ");
  picture = { image, top, file };
  const list = $("top-classes");
  list.replaceChildren(...top.map((c) => {
    const item = document.createElement("li");
    item.innerHTML = '<div class="label"><span class="name"></span><span class="score"></span></div><div class="bar"></div>';
    item.querySelector(".name").textContent = c.label;
    item.querySelector(".score").textContent = c.score.toFixed(4);
    item.querySelector(".bar").style.width = `${Math.max(1, c.score * 100)}%`;
    return item;
  }));
  const gradcam = current.name + "_gradcam";
  $("gradcam-figure").hidden = !served(gradcam);
  if (served(gradcam)) {
    $("gradcam-class").replaceChildren(...top.map((c) => new Option(c.label, c.index)));
    await drawGradcam();
  }
  await refreshStats();
}

// A grid's value at (x, y) in cell units (cell centres at integers), bilinear, clamped to the grid.
function bilinear(grid, w, h, x, y) {
  x = Math.min(Math.max(x, 0), w - 1); y = Math.min(Math.max(y, 0), h - 1);
  const x0 = Math.floor(x), y0 = Math.floor(y), x1 = Math.min(x0 + 1, w - 1), y1 = Math.min(y0 + 1, h - 1);
  const fx = x - x0, fy = y - y0;
  const top = grid[y0 * w + x0] * (1 - fx) + grid[y0 * w + x1] * fx;
  const bottom = grid[y1 * w + x0] * (1 - fx) + grid[y1 * w + x1] * fx;
  return top * (1 - fy) + bottom * fy;
}

// gradcam.py's frame_taper along one side of n pixels: 1 over the middle, where the digit was
// framed, to 0 at the frame's edge (smoothstep across a margin of 4 in 28).
function taper(position, n) {
  const t = Math.min(Math.max(Math.min(position, n - position) / (4 * n / 28), 0), 1);
  return t * t * (3 - 2 * t);
}

// The heatmap in a colour map whose opacity follows the square of the heat (0.8 at the peak,
// 0.2 at half of it, nothing where there is none), over the picture, as deepr's overlay() draws
// it, sampled smoothly (bilinear) at each of the picture's pixels; a framed digit's heatmap goes
// where the digit was found, fading out at the frame's edge.
async function drawGradcam() {
  const gradcam = current.name + "_gradcam";
  const config = await getJSON(modelPath(gradcam) + "/config");
  const spec = JSON.parse(parameter(config, "deepr.preprocessing"));
  const prepared = preprocess(picture.image, config); // its placement, also when the server decodes the file
  const tensor = spec.pixels === "encoded" ? await encodedPicture(picture.file, config) : prepared.tensor;
  const classIndex = { name: "class_index", datatype: "INT64", shape: [1, 1], data: BigInt64Array.from([BigInt($("gradcam-class").value)]) };
  const result = await infer(gradcam, [tensor, classIndex], [{ name: "heatmap", parameters: { binary_data: true } }]);
  const heat = result.heatmap;
  const [h, w] = heat.shape.slice(-2);
  const canvas = $("gradcam");
  drawPicture(canvas, picture.image);
  const context = canvas.getContext("2d");
  const shown = context.getImageData(0, 0, canvas.width, canvas.height);
  const peak = Math.max(...heat.data); // the graph's heatmap is raw: scaled to its peak, as deepr's clients do
  const p = prepared.placement;
  const [frameHeight, frameWidth] = p ? spec.size : [canvas.height, canvas.width];
  for (let y = 0; y < canvas.height; y++) {
    for (let x = 0; x < canvas.width; x++) {
      // the picture's pixel centre in the frame's pixels (a framed digit), or the picture's own
      const u = p ? (x + 0.5 - p.x0) / p.kx + p.left : x + 0.5, v = p ? (y + 0.5 - p.y0) / p.ky + p.top : y + 0.5;
      if (u < 0 || v < 0 || u > frameWidth || v > frameHeight || peak <= 0) continue;
      let t = Math.max(0, bilinear(heat.data, w, h, u * w / frameWidth - 0.5, v * h / frameHeight - 0.5)) / peak;
      if (p) t *= taper(u, frameWidth) * taper(v, frameHeight);
      const a = 0.8 * t * t, [r, g, b] = colour(JET, t), i = 4 * (y * canvas.width + x);
      shown.data[i] += a * (r - shown.data[i]);
      shown.data[i + 1] += a * (g - shown.data[i + 1]);
      shown.data[i + 2] += a * (b - shown.data[i + 2]);
    }
  }
  context.putImageData(shown, 0, 0);
  canvas.dataset.classIndex = $("gradcam-class").value; // drawn, for this class
}

// ---------------------------------------------------------------- the drawing pad (digit models)

const pad = { drawing: false, inked: false };

function clearPad() {
  const canvas = $("pad"), context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  pad.inked = false;
}

function padPoint(event) {
  const canvas = $("pad"), box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

function startStroke(event) {
  event.preventDefault();
  $("pad").setPointerCapture(event.pointerId);
  const context = $("pad").getContext("2d"), [x, y] = padPoint(event);
  pad.drawing = true;
  pad.inked = true;
  context.lineWidth = 18;
  context.lineCap = context.lineJoin = "round";
  context.strokeStyle = "#111";
  context.beginPath();
  context.moveTo(x, y);
  context.lineTo(x, y);
  context.stroke();
}

function continueStroke(event) {
  if (!pad.drawing) return;
  event.preventDefault();
  const context = $("pad").getContext("2d"), [x, y] = padPoint(event);
  context.lineTo(x, y);
  context.stroke();
}

// The pen lifts: the drawing is classified as a picture of dark ink on white paper.
async function endStroke(event) {
  if (!pad.drawing) return;
  pad.drawing = false;
  event.preventDefault();
  const canvas = $("pad");
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const image = await readPicture(blob);
  await classifyImage(image, blob);
}

const padWanted = (config) => {
  const spec = JSON.parse(parameter(config, "deepr.preprocessing") || "{}");
  return spec.background === "dark" && spec.color_mode === "L";
};

let featuresImage = null;

async function showActivations() {
  if (!featuresImage) return;
  const { tensor } = preprocess(featuresImage, current.config);
  drawPicture($("features-picture"), featuresImage);
  const layer = $("layer").value;
  const result = await infer(current.name, [tensor], [{ name: layer, parameters: { binary_data: true } }]);
  const { shape, data } = result[layer];
  const [channels, h, w] = shape.slice(-3);
  const columns = Math.min(16, channels), cell = Math.max(1, Math.min(64, Math.floor(1024 / columns) - 2)), gap = 2;
  const rows = Math.ceil(channels / columns);
  const canvas = $("activations");
  canvas.width = columns * (cell + gap) - gap;
  canvas.height = rows * (cell + gap) - gap;
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  const tile = document.createElement("canvas");
  tile.width = w;
  tile.height = h;
  const tileContext = tile.getContext("2d");
  context.imageSmoothingEnabled = false;
  for (let c = 0; c < channels; c++) {
    const plane = data.subarray(c * h * w, (c + 1) * h * w);
    let low = Infinity, high = -Infinity;
    for (const v of plane) { if (v < low) low = v; if (v > high) high = v; }
    const span = high - low;
    const cells = tileContext.createImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      const [r, g, b] = colour(VIRIDIS, span > 0 ? (plane[i] - low) / span : 0);
      cells.data.set([r, g, b, 255], 4 * i);
    }
    tileContext.putImageData(cells, 0, 0);
    context.drawImage(tile, (c % columns) * (cell + gap), Math.floor(c / columns) * (cell + gap), cell, cell);
  }
  $("activations-note").textContent = `${layer}: ${channels} channels of ${h}×${w}, each scaled to its own range`;
  await refreshStats();
}

function temperatures() {
  const chosen = [...document.querySelectorAll(".temperature:checked")].map((box) => Number(box.value));
  if ($("custom-on").checked) chosen.push(Number($("custom-temperature").value));
  return [...new Set(chosen)];
}

// All temperatures as rows of one request: the graph samples them side by side in one run.
async function sampleRows(codes, length, seed, chosen, charset) {
  const rows = chosen.length, int64 = (v) => BigInt64Array.from(Array(rows).fill(BigInt(v)));
  const result = await infer(current.name, [
    { name: "prompt", datatype: "INT64", shape: [rows, codes.length], data: BigInt64Array.from(Array(rows).fill(codes).flat()) },
    { name: "length", datatype: "INT64", shape: [rows, 1], data: int64(length) },
    { name: "temperature", datatype: "FP32", shape: [rows, 1], data: Float32Array.from(chosen) },
    { name: "top_k", datatype: "INT64", shape: [rows, 1], data: int64(0) },
    { name: "seed", datatype: "INT64", shape: [rows, 1], data: int64(seed) },
  ], [{ name: "chars", parameters: { binary_data: true } }]);
  const chars = result.chars.data;
  return chosen.map((temperature, row) => [
    temperature, chars.slice(row * length, (row + 1) * length).map((i) => charset[i]).join(""),
  ]);
}

async function sampleTexts() {
  const charset = parameter(current.config, "deepr.charset");
  const codes = [];
  for (const ch of $("prompt").value.toLowerCase().replaceAll("\t", " ")) {
    const i = charset.indexOf(ch);
    if (i >= 0) codes.push(BigInt(i));
  }
  if (!codes.length) throw new ServerError("the prompt has no character the model knows");
  const length = Number($("length").value), seed = Number($("seed").value);
  if (!(length >= 1 && length <= 2000)) throw new ServerError("length must be between 1 and 2000 characters");
  const chosen = temperatures();
  if (!chosen.length) throw new ServerError("choose at least one temperature");
  const box = $("texts");
  box.replaceChildren();
  if (!parameter(current.config, "deepr.ragged_inputs")) {
    throw new ServerError(`${current.name} was exported before generation graphs took rows of prompts: export it again with deepr export char_lstm --generate`);
  }
  const texts = await sampleRows(codes, length, seed, chosen, charset);
  for (const [temperature, text] of texts) {
    const column = document.createElement("div");
    column.className = "sample";
    column.innerHTML = "<h4></h4><pre></pre>";
    column.querySelector("h4").textContent = `temperature ${temperature}`;
    column.querySelector("pre").textContent = $("prompt").value + text;
    box.append(column);
  }
  await refreshStats();
}

// ---------------------------------------------------------------- wiring

function dropTarget(zone, input, handle) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    guarded(() => handle(e.dataTransfer.files[0]));
  });
  input.addEventListener("change", () => guarded(() => handle(input.files[0])));
}

dropTarget($("drop"), $("picture-file"), classifyPicture);
dropTarget($("features-drop"), $("features-file"), async (file) => {
  featuresImage = await readPicture(file);
  await showActivations();
});
$("layer").addEventListener("change", () => guarded(showActivations));
$("pad").addEventListener("pointerdown", startStroke);
$("pad").addEventListener("pointermove", continueStroke);
for (const end of ["pointerup", "pointercancel"]) $("pad").addEventListener(end, (e) => guarded(() => endStroke(e)));
$("pad-clear").addEventListener("click", clearPad);
$("gradcam-class").addEventListener("change", () => guarded(drawGradcam));
$("sample").addEventListener("click", () => guarded(sampleTexts));
$("custom-temperature").addEventListener("input", (e) => { $("custom-value").textContent = e.target.value; });
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("deepr-token", token);
  $("token-form").hidden = true;
  guarded(refreshRepository);
});

// While the server still builds models, the list follows it (state and epoch) every 2 s.
setInterval(() => {
  if (repository.some((e) => e.state === "LOADING")) refreshRepository().catch(() => {});
}, 2000);

window.deepr = { preprocess, mnistFrame }; // for tests that hold the page's preprocessing to the Python clients'

guarded(async () => {
  await refreshRepository();
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted) await choose(wanted);
});
