// One image panel: a canvas that draws the shared image through the shared view (zoom and
// pan in image coordinates, so every panel of a comparison stays in step) with its own
// model's evidence on top: heatmap, mask outline, boxes.
//
// View transform: screen = t + image * scale, with scale = fit * zoom (fit: the whole image
// in the canvas) and t chosen so that image point (cx, cy) sits at the canvas centre.
// Image coordinates: x = column, y = row, pixel (r, c) covers [c, c+1) x [r, r+1).

import { displayValue } from "./layers.js";

export const BOX_RGB = [255, 64, 255]; // magenta: not in JET, not grey, not the mask's cyan
export const MASK_RGB = [0, 230, 255];
const BOX_COLOUR = `rgb(${BOX_RGB.join(",")})`;
const OUTLINE_PX = 1.5;

export class Panel {
  /** shared: the viewer's state (display, windowCanvas, view, show, redraw, readout). */
  constructor(parent, shared, title) {
    this.shared = shared;
    this.root = document.createElement("section");
    this.root.className = "panel";
    this.head = document.createElement("div");
    this.head.className = "panel-head";
    this.head.textContent = title;
    this.canvas = document.createElement("canvas");
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", "radiograph");
    this.root.append(this.head, this.canvas);
    parent.append(this.root);
    this.scratch = document.createElement("canvas");
    this.result = null;
    this.heat = null;
    this.mask = null;
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(this.canvas);
    this.bindPointer();
  }

  destroy() {
    this.resizer.disconnect();
    this.root.remove();
  }

  /** result: a predict response (or null); heat, mask: layers from layers.js (or null). */
  setEvidence(result, heat, mask, headHtml) {
    this.result = result;
    this.heat = heat;
    this.mask = mask;
    if (headHtml !== undefined) this.head.innerHTML = headHtml;
    const d = this.shared.display;
    const n = result ? result.boxes.length : 0;
    this.canvas.setAttribute(
      "aria-label",
      d ? `radiograph ${d.columns} by ${d.rows} pixels${result ? `, ${n} box${n === 1 ? "" : "es"} drawn` : ""}` : "no image",
    );
    this.draw();
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
      this.draw();
    }
  }

  /** {scale, tx, ty} in canvas (device) pixels, or null without an image. */
  transform() {
    const d = this.shared.display;
    if (!d) return null;
    const { zoom, cx, cy } = this.shared.view;
    const fit = Math.min(this.canvas.width / d.columns, this.canvas.height / d.rows);
    const scale = fit * zoom;
    return { scale, tx: this.canvas.width / 2 - cx * scale, ty: this.canvas.height / 2 - cy * scale };
  }

  /** Canvas pixel (x, y) -> image coordinates {x: column, y: row} (fractional). */
  toImage(x, y) {
    const t = this.transform();
    return { x: (x - t.tx) / t.scale, y: (y - t.ty) / t.scale };
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    const t = this.transform();
    const { windowCanvas, show } = this.shared;
    if (!t || !windowCanvas) return;
    const d = this.shared.display;
    ctx.setTransform(t.scale, 0, 0, t.scale, t.tx, t.ty);
    // magnified: show the pixels themselves; minified: smooth, as a light box would
    ctx.imageSmoothingEnabled = t.scale < 1;
    ctx.drawImage(windowCanvas, 0, 0);
    if (this.heat && show.heat > 0) {
      ctx.imageSmoothingEnabled = true;
      ctx.globalAlpha = show.heat;
      ctx.drawImage(this.heat, 0, 0, d.columns, d.rows);
      ctx.globalAlpha = 1;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    if (this.mask && show.mask) this.drawOutline(ctx, t);
    if (this.result && show.boxes) this.drawBoxes(ctx, t);
    this.drawScaleBar(ctx, t);
  }

  /** The mask's outline in screen space: its dilation by OUTLINE_PX minus itself. */
  drawOutline(ctx, t) {
    const s = this.scratch;
    s.width = this.canvas.width;
    s.height = this.canvas.height;
    const sc = s.getContext("2d");
    sc.imageSmoothingEnabled = false;
    for (const [dx, dy] of [[-OUTLINE_PX, 0], [OUTLINE_PX, 0], [0, -OUTLINE_PX], [0, OUTLINE_PX]]) {
      sc.setTransform(t.scale, 0, 0, t.scale, t.tx + dx, t.ty + dy);
      sc.drawImage(this.mask, 0, 0);
    }
    sc.globalCompositeOperation = "destination-out";
    sc.setTransform(t.scale, 0, 0, t.scale, t.tx, t.ty);
    sc.drawImage(this.mask, 0, 0);
    ctx.drawImage(s, 0, 0);
  }

  drawBoxes(ctx, t) {
    const dpr = window.devicePixelRatio || 1;
    ctx.lineWidth = 2 * dpr;
    ctx.font = `${12 * dpr}px "DejaVu Sans", sans-serif`;
    ctx.textBaseline = "top";
    // a result that is not assessable keeps its evidence visible but dashed: it means nothing
    const dashed = this.result.assessment.status === "not_assessable";
    ctx.setLineDash(dashed ? [6 * dpr, 4 * dpr] : []);
    this.result.boxes.forEach((box, i) => {
      // inclusive pixel corners: the box covers [x_min, x_max + 1) x [y_min, y_max + 1)
      const x0 = Math.round(t.tx + box.x_min * t.scale);
      const y0 = Math.round(t.ty + box.y_min * t.scale);
      const x1 = Math.round(t.tx + (box.x_max + 1) * t.scale);
      const y1 = Math.round(t.ty + (box.y_max + 1) * t.scale);
      ctx.strokeStyle = BOX_COLOUR;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      const area = box.area_mm2 != null ? `${box.area_mm2.toFixed(0)} mm²` : `${box.area_px} px`;
      const label = `${i + 1}  ${box.score.toFixed(2)} · ${area}`;
      const w = ctx.measureText(label).width + 8 * dpr;
      const h = 16 * dpr;
      const ly = y0 - h - 2 * dpr >= 0 ? y0 - h - 2 * dpr : y0 + 2 * dpr;
      const lx = Math.max(0, Math.min(x0, this.canvas.width - w)); // kept on the canvas
      ctx.fillStyle = "rgba(0, 0, 0, 0.75)";
      ctx.fillRect(lx, ly, w, h);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, lx + 4 * dpr, ly + 2 * dpr);
    });
    ctx.setLineDash([]);
  }

  /** A bar of a round length in mm, when the header gives the pixel spacing. */
  drawScaleBar(ctx, t) {
    const spacing = this.shared.display.spacing;
    if (!spacing) return;
    const dpr = window.devicePixelRatio || 1;
    const pxPerMm = t.scale / spacing[1];
    const steps = [1, 2, 5, 10, 20, 50, 100, 200];
    const mm = steps.find((v) => v * pxPerMm >= 60 * dpr) || 200;
    const len = mm * pxPerMm;
    if (len > this.canvas.width - 32 * dpr) return; // magnified past any round length
    const x = 12 * dpr;
    const y = this.canvas.height - 14 * dpr;
    ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
    ctx.fillRect(x - 4 * dpr, y - 16 * dpr, len + 8 * dpr, 24 * dpr);
    ctx.fillStyle = "#fff";
    ctx.fillRect(x, y, len, 3 * dpr);
    ctx.font = `${11 * dpr}px "DejaVu Sans", sans-serif`;
    ctx.textBaseline = "bottom";
    ctx.fillText(`${mm} mm`, x, y - 2 * dpr);
  }

  bindPointer() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("pointerdown", (e) => {
      if (!this.shared.display) return;
      c.setPointerCapture(e.pointerId);
      drag = { x: e.clientX, y: e.clientY, windowing: e.shiftKey || e.button === 2 };
      c.classList.add("dragging");
    });
    c.addEventListener("pointermove", (e) => {
      if (!this.shared.display) return;
      this.report(e);
      if (!drag) return;
      const dpr = window.devicePixelRatio || 1;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      drag.x = e.clientX;
      drag.y = e.clientY;
      if (drag.windowing) {
        this.shared.adjustWindow(dy / -400, dx / 400);
      } else {
        const t = this.transform();
        this.shared.view.cx -= (dx * dpr) / t.scale;
        this.shared.view.cy -= (dy * dpr) / t.scale;
        this.shared.redraw();
      }
    });
    const end = () => {
      drag = null;
      c.classList.remove("dragging");
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("wheel", (e) => {
      if (!this.shared.display) return;
      e.preventDefault();
      if (!e.deltaY) return; // a horizontal scroll is not a zoom
      const dpr = window.devicePixelRatio || 1;
      const r = c.getBoundingClientRect();
      // proportional to the scroll (a trackpad's small steps zoom gently), one wheel notch
      // (~100 px) = x1.25 either way
      const lines = e.deltaMode === 1 ? e.deltaY * 33 : e.deltaY;
      const factor = Math.pow(1.25, Math.max(-3, Math.min(3, -lines / 100)));
      this.zoomAt((e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr, factor);
    }, { passive: false });
  }

  /** Zoom by factor keeping the image point under canvas pixel (x, y) where it is. */
  zoomAt(x, y, factor) {
    const before = this.toImage(x, y);
    const view = this.shared.view;
    view.zoom = Math.min(64, Math.max(0.25, view.zoom * factor));
    const after = this.toImage(x, y);
    view.cx += before.x - after.x;
    view.cy += before.y - after.y;
    this.shared.redraw();
  }

  report(e) {
    const dpr = window.devicePixelRatio || 1;
    const r = this.canvas.getBoundingClientRect();
    const p = this.toImage((e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr);
    const d = this.shared.display;
    const row = Math.floor(p.y);
    const col = Math.floor(p.x);
    const v = displayValue(d, row, col);
    if (v === null) return this.shared.readout("");
    const mm = d.spacing ? ` · ${(row * d.spacing[0]).toFixed(1)}, ${(col * d.spacing[1]).toFixed(1)} mm` : "";
    this.shared.readout(`row ${row}, column ${col}${mm} · display value ${v.toFixed(3)} · zoom ${(this.transform().scale * 100).toFixed(0)} %`);
  }
}
