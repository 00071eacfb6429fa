// The one module that owns request state: the request in flight, sending it, and what the server answers.
// A request is one query/skill about one frame; a newer one supersedes it (the server cancels it too).

import { captureFrame, frozenFrameId, holdFrameForMarks, releaseMarksFrame } from './camera.js';
import { connection } from './connection.js';
import { updateControls } from './controls.js';
import { els } from './dom.js';
import { addHistoryEntry, paint } from './history.js';
import { info } from './info.js';
import { backOffLive, isLive, liveAnswered, liveFrameSize, scheduleLive, setLive } from './live.js';
import { announce, clearError, showError } from './messages.js';
import { clearOverlay, markCount, setMarks } from './overlay.js';

// Fewer tokens than this make a tokens/s figure meaningless (two tokens in 1.3 s reads "1.5 tok/s").
const MIN_TOKENS_FOR_RATE = 3;
// Room kept between a card brought into view and the screen's edge.
const SCROLL_MARGIN = 8;

let current = null; // the one request in flight, or null
let counter = 0;
let lastLiveSaid = null; // the live answer last announced: a live answer is said only when it changes

// Counters for tests and for curious users (open the console and look at __vlmStats).
const stats = {
  sent: 0,
  liveSent: 0,
  streamEvents: 0,
  responses: 0,
  errors: 0, // failed requests; a cancelled one (Stop, superseded, live switched off) is counted in cancelled
  cancelled: 0,
  outstanding: 0, // sent but not yet answered by a final event, as the server sees it
  maxOutstanding: 0,
  liveOutstanding: 0,
  maxLiveOutstanding: 0,
  minLiveGapMs: null, // shortest time between two live frames sent back to back
  lastLiveSentAt: null,
};
window.__vlmStats = stats;

export function currentRequest() {
  return current;
}

function newId() {
  counter += 1;
  return window.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${counter}`;
}

// Sends one query/skill about the frame as it is now. Returns the request, or null.
export function send({ event, payload, label, live = false, object = null }) {
  const socket = connection();
  if (!socket?.connected) {
    showError('Not connected to the server yet; it reconnects by itself.');
    return null;
  }
  const frame = captureFrame(live ? liveFrameSize() : info.imageSize, !live);
  if (!frame) {
    showError('There is no camera frame to send yet.');
    return null;
  }
  supersede();
  // A question asked by hand replaces the marks; a live frame does not wipe a detect result (its marks are drawn
  // on the frozen frame they were found on, which live frames are then taken from too).
  if (!live) clearOverlay();
  const request = {
    id: live ? `live-${newId()}` : newId(), live, label, object, aspect: frame.aspect,
    text: '', state: 'pending', deltas: 0, deltasBeforeFinal: 0, meta: '', metaTitle: '',
    frameId: frozenFrameId(), // the frozen frame it is about, or null: the moving video
  };
  request.entry = live ? null : addHistoryEntry(request, frame.thumb);
  current = request;
  request.sentAt = performance.now();
  socket.emit(event, { id: request.id, ...payload, image: frame.dataUrl });
  countSent(live);
  paint(request);
  updateControls();
  if (!live) bringIntoView(els.current);
  return request;
}

// On a phone the answer card can be below the fold: it is brought up as its answer starts, but never so far that
// the question and Stop go off the top (a phone held sideways has room for little else), and nothing moves when
// it is in view already, or when the user has scrolled down past it (the history's new entry shows there).
function bringIntoView(card) {
  const box = card.getBoundingClientRect();
  const below = box.bottom + SCROLL_MARGIN - window.innerHeight;
  if (below <= 0 || box.top < 0) return;
  const by = Math.min(below, els.askForm.getBoundingClientRect().top - SCROLL_MARGIN);
  if (by > 0) window.scrollBy(0, by);
}

function countSent(live) {
  stats.sent += 1;
  stats.outstanding += 1;
  stats.maxOutstanding = Math.max(stats.maxOutstanding, stats.outstanding);
  if (!live) return;
  const now = performance.now();
  if (stats.lastLiveSentAt !== null) stats.minLiveGapMs = Math.min(stats.minLiveGapMs ?? Infinity, now - stats.lastLiveSentAt);
  stats.lastLiveSentAt = now;
  stats.liveSent += 1;
  stats.liveOutstanding += 1;
  stats.maxLiveOutstanding = Math.max(stats.maxLiveOutstanding, stats.liveOutstanding);
}

function countFinal(id) {
  stats.outstanding = Math.max(0, stats.outstanding - 1);
  if (String(id).startsWith('live-')) stats.liveOutstanding = Math.max(0, stats.liveOutstanding - 1);
}

// The connection dropped: nothing sent is outstanding any more, and the request in flight has failed.
export function dropInFlight(message) {
  stats.outstanding = 0;
  stats.liveOutstanding = 0;
  if (current) finish(current, 'error', message);
}

function supersede() {
  if (current) finish(current, 'cancelled', 'Superseded by a newer request.', false);
}

export function ask() {
  const question = els.question.value.trim();
  if (!question) {
    els.question.focus();
    return;
  }
  clearError('request');
  releaseMarksFrame(); // a new question is about the camera again, not the frame of the last detect result
  send({ event: 'query', payload: { question }, label: question });
}

export function caption(length) {
  clearError('request');
  releaseMarksFrame();
  const label = length === 'short' ? 'Caption' : 'Describe'; // the names of the buttons that ask for them
  send({ event: 'skill', payload: { skill: 'caption', length }, label });
}

export function locate(skill) {
  const object = els.skillObject.value.trim();
  if (!object) {
    els.skillObject.focus();
    return;
  }
  clearError('request');
  // Its boxes or dots belong to one frame: that frame is frozen on the stage, so that they are drawn over what
  // they were found on, not over a video that has moved on. Live mode, about the moving video, stops.
  if (isLive()) setLive(false);
  const held = holdFrameForMarks();
  const label = `${skill === 'detect' ? 'Detect' : 'Point at'}: ${object}`;
  const request = send({ event: 'skill', payload: { skill, object }, label, object });
  if (request) request.holdsFrame = held;
  else if (held) releaseMarksFrame(held);
}

// Stop: the request in flight is cancelled, what had streamed is kept. A live one also ends live mode.
export function cancel() {
  if (!current) return;
  if (current.live) setLive(false); // which stops the live request (cancelLive)
  else stop(current);
}

// Live mode was switched off: its request in flight is stopped as Stop stops it.
export function cancelLive() {
  lastLiveSaid = null; // the first answer of the next run is said, whatever it is
  if (current?.live) stop(current);
}

function stop(request) {
  connection().emit('cancel', { id: request.id });
  request.stopped = true;
  if (request.text.trim()) request.meta = 'Stopped: the answer is cut short here';
  finish(request, 'cancelled', 'Cancelled.');
}

// The question has waited a while behind others' (a busy server): how many go first, until its answer starts. A
// screen reader hears the first such note, not each count after it. A live question keeps the previous answer on
// show instead.
export function onQueued({ id, ahead }) {
  const request = current;
  if (!request || request.id !== id || request.state !== 'pending' || request.live) return;
  request.meta = ahead === 0 ? 'Waiting: next in line' : `Waiting: ${ahead} ahead in line`;
  if (!request.waiting) announce(request.meta);
  request.waiting = true;
  paint(request);
}

// Its turn came, or it ended first: the waiting note goes.
function stopWaiting(request) {
  if (!request.waiting) return;
  request.waiting = false;
  request.meta = '';
}

export function onStream({ id, delta }) {
  stats.streamEvents += 1;
  const request = current;
  if (!request || request.id !== id) return;
  stopWaiting(request);
  request.text += delta;
  request.deltas += 1;
  request.state = 'streaming';
  paint(request);
}

export function onResponse(response) {
  stats.responses += 1;
  countFinal(response.id);
  const request = current;
  if (!request || request.id !== response.id) return;
  stopWaiting(request);
  request.text = response.answer;
  request.deltasBeforeFinal = request.deltas;
  describeTiming(request, response.timing, performance.now() - request.sentAt);
  // Marks are drawn only over the frozen frame they were found on, if it is still shown.
  if (request.frameId !== null && request.frameId === frozenFrameId()) setMarks(request, response);
  if (request.live) liveAnswered();
  finish(request, 'done');
}

export function onQueryError(error) {
  if (error.code === 'cancelled') stats.cancelled += 1;
  else stats.errors += 1;
  countFinal(error.id);
  const request = current;
  if (!request || request.id !== error.id) return;
  const outcome = error.code === 'cancelled' ? 'cancelled' : 'error';
  if (request.live && outcome === 'error') backOffLive();
  finish(request, outcome, errorText(error));
  if (request.live && error.code === 'unauthorized') setLive(false); // after finish: nothing left to cancel
}

export function errorText({ code, message }) {
  const friendly = {
    busy: 'The model is busy with other users; try again in a moment.',
    shutting_down: 'The server is shutting down or restarting; the page reconnects by itself once it is back.',
    rate_limited: 'Too many requests; slow down a little.',
    timeout: 'The model took too long to answer.',
    image_too_large: 'The frame is too large for the server; choose a lower resolution.',
    unauthorized: 'Not authorised: open the link that includes ?token=….',
  }[code];
  return friendly ? `${friendly} (${message})` : message || code;
}

function finish(request, outcome, message = '', resumeLive = true) {
  stopWaiting(request);
  request.state = outcome;
  if (message) request.error = message;
  if (current === request) current = null;
  paint(request);
  sayOutcome(request);
  // A detect or point that found nothing (or did not finish) has no marks to show on its frozen frame.
  const marked = outcome === 'done' && markCount() > 0;
  if (request.holdsFrame && !marked) releaseMarksFrame(request.holdsFrame);
  updateControls();
  if (resumeLive) scheduleLive();
}

// A screen reader hears an answer once, complete (the answer card changes with every token and is not a live
// region), or that it was stopped, or why it failed; a superseded one is followed by the newer one's. A live
// answer is said when it differs from the last one said: "red" forty times over is no news.
function sayOutcome(request) {
  const text = request.text.trim();
  if (request.live) {
    if (request.state === 'done' && text && text !== lastLiveSaid) {
      lastLiveSaid = text;
      announce(text);
    }
    return;
  }
  lastLiveSaid = null;
  if (request.state === 'done') announce(text || '(empty answer)');
  else if (request.stopped) announce(text ? `Stopped: ${text}` : 'Stopped.');
  else if (request.state === 'error') announce(`No answer: ${request.error}`);
}

// The figure shown is the round trip this page measured, from sending the frame to the final answer: what the
// user waited, network included (the server's own total was 8 ms where a slow network took seconds). The
// server's breakdown, only a part of that wait, is in the tooltip.
function describeTiming(request, timing, roundTripMs) {
  const parts = [`${Math.round(roundTripMs)} ms`];
  // Detect and point decode coordinates, not text: a tokens/s figure for them would mean nothing to a reader.
  if (timing && !request.object && timing.tokens >= MIN_TOKENS_FOR_RATE && timing.model_ms > 0) {
    parts.push(`${(timing.tokens / (timing.model_ms / 1000)).toFixed(1)} tok/s`);
  }
  request.meta = parts.join(' · ');
  request.metaTitle = [`Round trip (measured by this page): ${Math.round(roundTripMs)} ms`, ...serverTiming(timing)]
    .join('\n');
}

function serverTiming(timing) {
  if (!timing) return [];
  const times = ['queue_ms', 'decode_ms', 'first_token_ms', 'model_ms', 'total_ms']
    .filter((key) => timing[key] !== undefined)
    .map((key) => `  ${key.replace('_ms', '')}: ${Math.round(timing[key])} ms`);
  const tokens = timing.tokens !== undefined ? [`  tokens: ${timing.tokens}`] : [];
  return ['Server time:', ...times, ...tokens];
}
