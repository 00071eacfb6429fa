// Detect boxes and point dots drawn over the frame, in the colours style.css defines (--mark-*).

import { els } from './dom.js';

const LABEL_HEIGHT = 20;

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
  canvas.dataset.marks = String(markCount());
  if (!marks || !width || !height) return;
  const frame = contentBox(width, height, marks.aspect);
  const mirrored = els.mirror.checked;
  const px = (x) => frame.x + (mirrored ? 1 - x : x) * frame.w;
  const py = (y) => frame.y + y * frame.h;
  const palette = colours();
  const boxes = marks.objects.map((object) => edges(object, px, py));
  for (const box of boxes) drawBox(ctx, palette, box);
  // Labels go over every box's lines, each clear of those drawn before it.
  const labels = [];
  if (marks.label) for (const box of boxes) drawLabel(ctx, palette, box, marks.label, labels);
  for (const point of marks.points) drawDot(ctx, palette, px(point.x), py(point.y));
}

// An object's box on the canvas (mirrored, left and right swap).
function edges(object, px, py) {
  return {
    left: Math.min(px(object.x_min), px(object.x_max)),
    right: Math.max(px(object.x_min), px(object.x_max)),
    top: py(object.y_min),
    bottom: py(object.y_max),
  };
}

function drawBox(ctx, palette, { left, right, top, bottom }) {
  ctx.lineWidth = 3;
  ctx.strokeStyle = palette.box;
  ctx.strokeRect(left, top, right - left, bottom - top);
}

// Above the box, or inside its top where there is no room above; labels is the label boxes drawn so far.
function drawLabel(ctx, palette, { left, top }, label, labels) {
  ctx.font = '600 13px system-ui, sans-serif';
  const above = top > LABEL_HEIGHT ? top - LABEL_HEIGHT : top;
  const place = freePlace(labels, { x: left - 1.5, y: above, w: ctx.measureText(label).width + 10, h: LABEL_HEIGHT });
  ctx.fillStyle = palette.box;
  ctx.fillRect(place.x, place.y, place.w, place.h);
  ctx.fillStyle = palette.boxText;
  ctx.fillText(label, place.x + 5, place.y + 14);
}

// Boxes that share a corner would print their labels on top of each other: a label is moved down, past each
// label drawn before that it would cover, and is then counted as drawn.
function freePlace(labels, wanted) {
  const place = { ...wanted };
  let covered = labels.find((other) => overlaps(place, other));
  while (covered) {
    place.y = covered.y + covered.h;
    covered = labels.find((other) => overlaps(place, other));
  }
  labels.push(place);
  return place;
}

function overlaps(a, b) {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
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

export function markCount() {
  return marks ? marks.objects.length + marks.points.length : 0;
}

export function clearOverlay() {
  marks = null;
  drawOverlay();
}
