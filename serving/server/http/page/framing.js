// The digit on a page, framed as MNIST's digits were: serving/protocol/framing.py step for
// step (its docstring says why each step is there). Integers, minima, maxima and counts, so
// that the page gets the pixels the Python clients get (within one grey level, from the
// resizes, which follow Pillow's in zoo.js). mnistFrame returns {plane, placement}; placement
// says where the frame came from in the picture (null: no digit found, the picture resized whole).

const ANALYSIS_SIDE = 512, MIN_RISE = 24, FLATTEN_FROM = 64;

const roundHalfUp = (x) => Math.floor(x + 0.5);

function borderMedian(plane, width, height) {
  const ring = Math.max(1, Math.floor(Math.min(width, height) / 10));
  const values = [];
  for (let y = 0; y < Math.min(ring, height); y++) for (let x = 0; x < width; x++) values.push(plane[y * width + x]);
  for (let y = Math.max(0, height - ring); y < height; y++) for (let x = 0; x < width; x++) values.push(plane[y * width + x]);
  for (let y = ring; y < height - ring; y++) {
    for (let x = 0; x < Math.min(ring, width); x++) values.push(plane[y * width + x]);
    for (let x = Math.max(0, width - ring); x < width; x++) values.push(plane[y * width + x]);
  }
  values.sort((a, b) => a - b);
  const mid = values.length >> 1;
  return values.length % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

// A minimum (or maximum) over a window of k (odd) along each row, the picture's edge repeated
// (scipy.ndimage's mode "nearest"), then along each column. Each row in time independent of
// k (van Herk and Gil-Werman: running extremes within blocks of k, from each end).
function extremeFilter(plane, width, height, k, pick) {
  const half = k >> 1;
  const along = (src, w, h) => {
    const out = new Int32Array(w * h);
    const n = w + 2 * half, blocks = Math.ceil(n / k) * k;
    const g = new Int32Array(blocks), forward = new Int32Array(blocks), backward = new Int32Array(blocks);
    for (let y = 0; y < h; y++) {
      const row = y * w;
      for (let i = 0; i < blocks; i++) g[i] = src[row + Math.min(w - 1, Math.max(0, i - half))];
      for (let i = 0; i < blocks; i++) forward[i] = i % k ? pick(forward[i - 1], g[i]) : g[i];
      for (let i = blocks - 1; i >= 0; i--) backward[i] = (i + 1) % k && i + 1 < blocks ? pick(backward[i + 1], g[i]) : g[i];
      for (let x = 0; x < w; x++) out[row + x] = pick(backward[x], forward[x + k - 1]);
    }
    return out;
  };
  return alongColumns(along(plane, width, height), width, height, along);
}

// `pass` (a function of a plane, its width and height, along its rows) applied along the columns.
function alongColumns(plane, width, height, pass) {
  const t = new plane.constructor(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) t[x * height + y] = plane[y * width + x];
  const done = pass(t, height, width);
  const out = new done.constructor(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) out[y * width + x] = done[x * height + y];
  return out;
}

function rise(plane, width, height) {
  const level = new Int32Array(width * height);
  let ground;
  if (Math.min(width, height) < FLATTEN_FROM) {
    const g = roundHalfUp(borderMedian(plane, width, height));
    ground = new Int32Array(width * height).fill(g);
  } else {
    const k = Math.max(5, Math.floor(Math.min(width, height) / 6)) | 1;
    ground = extremeFilter(extremeFilter(plane, width, height, k, Math.min), width, height, k, Math.max);
  }
  for (let i = 0; i < level.length; i++) level[i] = Math.max(plane[i] - ground[i], 0);
  return level;
}

// Ruled lines: the ink of a row (then a column) holding ink across four fifths of the
// picture, except where ink lies on both sides within 4 pixels (a stroke crossing the line).
function withoutLines(mask, width, height) {
  const pass = (m, w, h) => {
    const lines = new Uint8Array(w * h);
    let any = false;
    for (let y = 0; y < h; y++) {
      let count = 0;
      for (let x = 0; x < w; x++) count += m[y * w + x];
      if (5 * count >= 4 * w) { for (let x = 0; x < w; x++) lines[y * w + x] = m[y * w + x]; any = true; }
    }
    if (!any) return m;
    const kept = new Uint8Array(w * h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!m[i]) continue;
        if (!lines[i]) { kept[i] = 1; continue; }
        let above = false, below = false;
        for (let s = 1; s <= 4; s++) {
          if (y - s >= 0 && m[i - s * w] && !lines[i - s * w]) above = true;
          if (y + s < h && m[i + s * w] && !lines[i + s * w]) below = true;
        }
        kept[i] = above && below ? 1 : 0;
      }
    }
    return kept;
  };
  return alongColumns(pass(mask, width, height), width, height, pass);
}

// Pieces of ink, 8-connected, numbered in the order of their first pixel (as scipy's label):
// {labels, pieces: [{area, y0, y1, x0, x1}] (index 0 unused; y1, x1 past the end)}.
function piecesOf(mask, width, height) {
  const labels = new Int32Array(width * height);
  const pieces = [null];
  const stack = [];
  for (let start = 0; start < mask.length; start++) {
    if (!mask[start] || labels[start]) continue;
    const id = pieces.length;
    const piece = { area: 0, y0: height, y1: 0, x0: width, x1: 0 };
    labels[start] = id;
    stack.push(start);
    while (stack.length) {
      const i = stack.pop();
      const y = Math.floor(i / width), x = i - y * width;
      piece.area++;
      piece.y0 = Math.min(piece.y0, y); piece.y1 = Math.max(piece.y1, y + 1);
      piece.x0 = Math.min(piece.x0, x); piece.x1 = Math.max(piece.x1, x + 1);
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const yy = y + dy, xx = x + dx;
          if (yy < 0 || yy >= height || xx < 0 || xx >= width) continue;
          const j = yy * width + xx;
          if (mask[j] && !labels[j]) { labels[j] = id; stack.push(j); }
        }
      }
    }
    pieces.push(piece);
  }
  return { labels, pieces };
}

const touchesEdge = (p, width, height) => p.y0 === 0 || p.x0 === 0 || p.y1 === height || p.x1 === width;

// A drawn box: ink along four fifths of each side within its outer three lines; the width
// of the band its sides take (and the blur beside it), or 0.
function frameBand(labels, width, p, id) {
  const h = p.y1 - p.y0, w = p.x1 - p.x0;
  if (h < 12 || w < 12) return 0;
  const at = (r, c) => labels[(p.y0 + r) * width + p.x0 + c] === id;
  // each side as rows of a view: (line, position along it) -> (row, column)
  const sides = [
    [h, w, (l, i) => at(l, i)],
    [h, w, (l, i) => at(h - 1 - l, i)],
    [w, h, (l, i) => at(i, l)],
    [w, h, (l, i) => at(i, w - 1 - l)],
  ];
  for (const [, length, inked] of sides) {
    let covered = 0;
    for (let i = 0; i < length; i++) if (inked(0, i) || inked(1, i) || inked(2, i)) covered++;
    if (5 * covered < 4 * length) return 0;
  }
  let band = 0;
  for (const [lines, length, inked] of sides) {
    let rows = 0;
    while (rows < Math.floor(lines / 4)) {
      let count = 0;
      for (let i = 0; i < length; i++) if (inked(rows, i)) count++;
      if (2 * count < length) break;
      rows++;
    }
    band = Math.max(band, rows);
  }
  return band + 2;
}

// The digit's pixels (a mask), or null: see framing.py's _digit.
function digitOf(mask, width, height) {
  let labels, pieces, best;
  let found = false;
  for (let round = 0; round < 3; round++) {
    ({ labels, pieces } = piecesOf(mask, width, height));
    const candidates = [];
    for (let i = 1; i < pieces.length; i++) {
      const p = pieces[i];
      if (10 * (p.y1 - p.y0) < 9 * height && 10 * (p.x1 - p.x0) < 9 * width) candidates.push(i);
    }
    if (!candidates.length) return null;
    const largest = Math.max(...candidates.map((i) => pieces[i].area));
    const inside = candidates.filter((i) => !touchesEdge(pieces[i], width, height) && 4 * pieces[i].area >= largest);
    best = 0;
    for (const i of inside.length ? inside : candidates) if (!best || pieces[i].area > pieces[best].area) best = i;
    const p = pieces[best];
    const band = frameBand(labels, width, p, best);
    if (!band) { found = true; break; }
    const next = new Uint8Array(mask);
    for (let y = p.y0; y < p.y1; y++) {
      for (let x = p.x0; x < p.x1; x++) {
        const inner = y >= p.y0 + band && y < p.y1 - band && x >= p.x0 + band && x < p.x1 - band;
        if (labels[y * width + x] === best && !inner) next[y * width + x] = 0;
      }
    }
    mask = next;
  }
  if (!found) return null;
  const b = pieces[best];
  const tall = b.y1 - b.y0, wide = b.x1 - b.x0;
  const reach = Math.floor(Math.max(tall, wide) / 4);
  const keep = new Uint8Array(pieces.length);
  keep[best] = 1;
  for (let i = 1; i < pieces.length; i++) {
    const p = pieces[i];
    if (i === best || 20 * p.area < b.area || touchesEdge(p, width, height)) continue;
    const pt = p.y1 - p.y0, pw = p.x1 - p.x0;
    if ((pw >= 8 * pt && 5 * pw >= 6 * wide) || (pt >= 8 * pw && 5 * pt >= 6 * tall)) continue;
    if (frameBand(labels, width, p, i)) continue;
    if (p.y0 < b.y1 + reach && p.y1 > b.y0 - reach && p.x0 < b.x1 + reach && p.x1 > b.x0 - reach) keep[i] = 1;
  }
  const digit = new Uint8Array(width * height);
  for (let i = 0; i < digit.length; i++) digit[i] = keep[labels[i]];
  return digit;
}

// About twice the ink's area over its outline (pixels with a 4-neighbour off the ink, or off the crop).
function strokeWidth(digit, width, height) {
  let area = 0, outline = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (!digit[y * width + x]) continue;
      area++;
      const inner = y > 0 && y < height - 1 && x > 0 && x < width - 1 &&
        digit[(y - 1) * width + x] && digit[(y + 1) * width + x] && digit[y * width + x - 1] && digit[y * width + x + 1];
      if (!inner) outline++;
    }
  }
  return 2.0 * area / Math.max(outline, 1);
}

function mnistFrame(plane, width, height, outWidth, outHeight) {
  const longer = Math.max(width, height);
  let page = plane, pw = width, ph = height;
  if (longer > ANALYSIS_SIDE) {
    pw = Math.max(1, roundHalfUp(width * ANALYSIS_SIDE / longer));
    ph = Math.max(1, roundHalfUp(height * ANALYSIS_SIDE / longer));
    page = resize(plane, width, height, pw, ph, "bilinear");
  }
  const level = rise(page, pw, ph);
  let peak = 0;
  for (const v of level) peak = Math.max(peak, v);
  let digit = null;
  if (peak >= MIN_RISE) {
    let mask = new Uint8Array(pw * ph);
    for (let i = 0; i < mask.length; i++) mask[i] = 5 * level[i] >= peak ? 1 : 0;
    if (Math.min(pw, ph) >= FLATTEN_FROM) mask = withoutLines(mask, pw, ph);
    digit = digitOf(mask, pw, ph);
  }
  if (!digit) return { plane: resize(plane, width, height, outWidth, outHeight, "bilinear"), placement: null };
  let x0 = pw, x1 = -1, y0 = ph, y1 = -1;
  for (let y = 0; y < ph; y++) {
    for (let x = 0; x < pw; x++) {
      if (digit[y * pw + x]) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    }
  }
  let cropWidth = x1 - x0 + 1, cropHeight = y1 - y0 + 1;
  let crop = new Uint8Array(cropWidth * cropHeight);
  const inked = new Uint8Array(cropWidth * cropHeight);
  for (let y = 0; y < cropHeight; y++) {
    for (let x = 0; x < cropWidth; x++) {
      const i = (y0 + y) * pw + x0 + x;
      if (!digit[i]) continue;
      inked[y * cropWidth + x] = 1;
      crop[y * cropWidth + x] = Math.min(255, Math.max(0, Math.floor(level[i] * (255 / peak) + 0.5)));
    }
  }
  const longest = Math.max(cropWidth, cropHeight);
  const stroke = strokeWidth(inked, cropWidth, cropHeight);
  const grow = roundHalfUp((longest / 10 - stroke) / 2);
  if (4 * stroke < longest / 10 * 2 && grow > 0) { // finer than half of MNIST's: thicken it
    const paddedWidth = cropWidth + 2 * grow, paddedHeight = cropHeight + 2 * grow;
    const padded = new Uint8Array(paddedWidth * paddedHeight);
    for (let y = 0; y < cropHeight; y++) padded.set(crop.subarray(y * cropWidth, (y + 1) * cropWidth), (y + grow) * paddedWidth + grow);
    // a maximum over (2 grow + 1) squared, zero beyond the edge: padded enough that "nearest" is zero too
    crop = Uint8Array.from(extremeFilter(padded, paddedWidth, paddedHeight, 2 * grow + 1, Math.max));
    cropWidth = paddedWidth; cropHeight = paddedHeight;
  }
  const scale = (20 * Math.min(outWidth, outHeight) / 28) / Math.max(cropWidth, cropHeight);
  const fitWidth = Math.max(1, roundHalfUp(cropWidth * scale)), fitHeight = Math.max(1, roundHalfUp(cropHeight * scale));
  const fitted = resize(crop, cropWidth, cropHeight, fitWidth, fitHeight, "bilinear");
  let total = 0, rowMoment = 0, columnMoment = 0;
  for (let y = 0; y < fitHeight; y++) {
    for (let x = 0; x < fitWidth; x++) {
      const v = fitted[y * fitWidth + x];
      total += v; rowMoment += v * y; columnMoment += v * x;
    }
  }
  const cy = total ? rowMoment / total : (fitHeight - 1) / 2, cx = total ? columnMoment / total : (fitWidth - 1) / 2;
  const top = roundHalfUp(outHeight / 2 - cy), left = roundHalfUp(outWidth / 2 - cx); // MNIST's centre: (14, 14)
  const frame = new Uint8Array(outWidth * outHeight);
  for (let y = Math.max(top, 0); y < Math.min(top + fitHeight, outHeight); y++) {
    for (let x = Math.max(left, 0); x < Math.min(left + fitWidth, outWidth); x++) {
      frame[y * outWidth + x] = fitted[(y - top) * fitWidth + (x - left)];
    }
  }
  const grown = cropHeight - (y1 - y0 + 1);
  const fx = width / pw, fy = height / ph; // the analysis copy -> the picture
  return {
    plane: frame,
    placement: {
      x0: (x0 - Math.floor(grown / 2)) * fx, y0: (y0 - Math.floor(grown / 2)) * fy,
      kx: cropWidth / fitWidth * fx, ky: cropHeight / fitHeight * fy, left, top,
    },
  };
}
