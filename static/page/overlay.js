// Detect boxes and point dots drawn over the frame, in the colours style.css defines (--mark-*).

import { els } from './dom.js';

let marks = null; // the last detect/point result drawn, or null

// Where the frame is drawn inside the stage (object-fit: contain letterboxes it).
function contentBox(width, height, aspect) {
  if (width / height > aspect) {
    const w = height * aspect;
    return { x: (width - w) / 2, y: 0, w, h: height };
  }
  const h = width / aspect;
  return { x: 0, y: (height - h) / 2, w: width, h };
}

function colours() {
  const style = getComputedStyle(els.root);
  const read = (name) => style.getPropertyValue(name).trim();
  return { box: read('--mark-box'), boxText: read('--mark-box-text'), dot: read('--mark-dot'), ring: read('--mark-dot-ring') };
}

export function drawOverlay() {
  const canvas = els.overlay;
  const { width, height } = canvas.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  canvas.dataset.marks = String(marks ? marks.objects.length + marks.points.length : 0);
  if (!marks || !width || !height) return;
  const box = contentBox(width, height, marks.aspect);
  const mirrored = els.mirror.checked;
  const px = (x) => box.x + (mirrored ? 1 - x : x) * box.w;
  const py = (y) => box.y + y * box.h;
  const palette = colours();
  for (const object of marks.objects) drawBox(ctx, palette, object, px, py, marks.label);
  for (const point of marks.points) drawDot(ctx, palette, px(point.x), py(point.y));
}

function drawBox(ctx, palette, object, px, py, label) {
  const left = Math.min(px(object.x_min), px(object.x_max));
  const right = Math.max(px(object.x_min), px(object.x_max));
  const top = py(object.y_min);
  const bottom = py(object.y_max);
  ctx.lineWidth = 3;
  ctx.strokeStyle = palette.box;
  ctx.strokeRect(left, top, right - left, bottom - top);
  if (!label) return;
  ctx.font = '600 13px system-ui, sans-serif';
  const textWidth = ctx.measureText(label).width;
  const labelTop = top > 20 ? top - 20 : top;
  ctx.fillStyle = palette.box;
  ctx.fillRect(left - 1.5, labelTop, textWidth + 10, 20);
  ctx.fillStyle = palette.boxText;
  ctx.fillText(label, left + 3.5, labelTop + 14);
}

function drawDot(ctx, palette, x, y) {
  ctx.beginPath();
  ctx.arc(x, y, 7, 0, Math.PI * 2);
  ctx.fillStyle = palette.dot;
  ctx.fill();
  ctx.lineWidth = 2.5;
  ctx.strokeStyle = palette.ring;
  ctx.stroke();
}

// request: the one that asked (its frame's aspect, and the object named); response: its objects or points.
export function setMarks(request, response) {
  const objects = response.objects || [];
  const points = response.points || [];
  marks = objects.length || points.length
    ? { objects, points, aspect: request.aspect, label: request.object }
    : null;
  drawOverlay();
}

export function clearOverlay() {
  marks = null;
  drawOverlay();
}
