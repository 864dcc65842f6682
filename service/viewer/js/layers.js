// Raster layers in the image's own pixel grid (rows x columns, row 0 at the top), each an
// offscreen canvas that a panel draws through its view transform.

/** A canvas of the given size (offscreen: never attached to the page). */
function canvasOf(width, height) {
  const c = document.createElement("canvas");
  c.width = width;
  c.height = height;
  return c;
}

/**
 * The display pixels through a window, as a grey canvas.
 * display: {rows, columns, codes: Uint16Array}; center, width: in display units [0, 1]
 * (center 0.5, width 1 is exactly what the service's display chain gave the model).
 */
export function renderWindow(display, center, width, target) {
  const { rows, columns, codes } = display;
  const canvas = target && target.width === columns && target.height === rows ? target : canvasOf(columns, rows);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(columns, rows);
  const out = new Uint32Array(image.data.buffer);
  // One table over all 65536 codes: the loop below is a single gather per pixel.
  const lut = new Uint32Array(65536);
  const low = center - width / 2;
  for (let code = 0; code < 65536; code++) {
    let g = ((code / 65535 - low) / width) * 255;
    g = g < 0 ? 0 : g > 255 ? 255 : Math.round(g);
    lut[code] = 0xff000000 | (g << 16) | (g << 8) | g; // ABGR on little-endian
  }
  for (let i = 0; i < codes.length; i++) out[i] = lut[codes[i]];
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/** Grey value (0..1) of the display chain at image pixel (row, col), or null outside. */
export function displayValue(display, row, col) {
  if (row < 0 || col < 0 || row >= display.rows || col >= display.columns) return null;
  return display.codes[row * display.columns + col] / 65535;
}

function jet(t) {
  // the JET colour map (as OpenCV's COLORMAP_JET), t in [0, 1] -> [r, g, b] 0..255
  const f = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
  return [f(1.5 - Math.abs(4 * t - 3)), f(1.5 - Math.abs(4 * t - 2)), f(1.5 - Math.abs(4 * t - 1))];
}

async function pixelsOfPng(base64) {
  const bytes = Uint8Array.from(atob(base64), (ch) => ch.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  const c = canvasOf(bitmap.width, bitmap.height);
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

/**
 * The saliency map (8-bit grey PNG, possibly downscaled) as a JET overlay whose alpha
 * follows the saliency: no saliency, no colour. Stretched over the whole image by the panel.
 */
export async function heatLayer(map) {
  const src = await pixelsOfPng(map.data);
  const c = canvasOf(src.width, src.height);
  const ctx = c.getContext("2d");
  const out = ctx.createImageData(src.width, src.height);
  const table = Array.from({ length: 256 }, (_, v) => jet(v / 255));
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i];
    const [r, g, b] = table[v];
    out.data[i] = r;
    out.data[i + 1] = g;
    out.data[i + 2] = b;
    out.data[i + 3] = Math.min(255, v * 1.5);
  }
  ctx.putImageData(out, 0, 0);
  return c;
}

/** A mask (rows x columns booleans as Uint8Array) as an opaque single-colour canvas. */
function maskCanvas(bits, rows, columns, rgb) {
  const c = canvasOf(columns, rows);
  const ctx = c.getContext("2d");
  const out = ctx.createImageData(columns, rows);
  const px = new Uint32Array(out.data.buffer);
  const on = 0xff000000 | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0];
  for (let i = 0; i < bits.length; i++) if (bits[i]) px[i] = on;
  ctx.putImageData(out, 0, 0);
  return c;
}

/** COCO uncompressed RLE (column-major, starting with zeros) -> row-major Uint8Array. */
export function decodeRle(counts, rows, columns) {
  const bits = new Uint8Array(rows * columns);
  let index = 0;
  let value = 0;
  for (const run of counts) {
    if (value) {
      for (let k = index; k < index + run; k++) {
        const col = Math.floor(k / rows);
        const row = k - col * rows;
        bits[row * columns + col] = 1;
      }
    }
    index += run;
    value ^= 1;
  }
  return bits;
}

/** The response's mask block (PNG or RLE) as a canvas in the original grid, or null. */
export async function maskLayer(mask, rgb) {
  if (!mask) return null;
  let bits;
  if (mask.format === "rle") {
    bits = decodeRle(mask.counts, mask.rows, mask.columns);
  } else {
    const src = await pixelsOfPng(mask.data);
    bits = new Uint8Array(mask.rows * mask.columns);
    for (let i = 0; i < bits.length; i++) bits[i] = src.data[i * 4] > 127 ? 1 : 0;
  }
  let any = false;
  for (let i = 0; i < bits.length && !any; i++) any = bits[i] === 1;
  return any ? maskCanvas(bits, mask.rows, mask.columns, rgb) : null;
}
