// Live mode: keep asking the question (or for a short caption) about the latest frame.
// Backpressure: a live frame is sent only when nothing else is in flight, and no faster than the rate limit allows.

import { frameSource, releaseMarksFrame } from './camera.js';
import { connected } from './connection.js';
import { updateControls } from './controls.js';
import { els } from './dom.js';
import { info } from './info.js';
import { showError } from './messages.js';
import { cancelLive, currentRequest, send } from './requests.js';

const LIVE_RETRY_MS = 500;
const LIVE_ERROR_BACKOFF_MS = 1500;

let on = false;
let timer = 0;
let nextAt = 0;
let answers = 0;

export function isLive() {
  return on;
}

export function liveAnswerCount() {
  return answers;
}

export function liveAnswered() {
  answers += 1;
}

// After a failed live frame the next one waits a little longer.
export function backOffLive() {
  nextAt = performance.now() + LIVE_ERROR_BACKOFF_MS;
}

export function liveFrameSize() {
  return withinBounds(els.liveSize) ?? info.imageSize;
}

export function liveInterval() {
  return withinBounds(els.liveInterval) ?? 0;
}

// A number field's value, put back within the field's own min and max where it was typed outside them, so
// that what the field shows is what live mode uses (-5 ms showed as typed and ran as 0); null when empty.
function withinBounds(input) {
  const value = Number(input.value);
  if (input.value.trim() === '' || !Number.isFinite(value)) return null;
  const bounded = Math.min(Number(input.max), Math.max(Number(input.min), value));
  if (bounded !== value) input.value = String(bounded);
  return bounded;
}

export function setLive(wanted) {
  if (wanted && !els.question.value.trim() && !info.capabilities.has('caption')) {
    showError('Type a question first: live mode keeps asking it about the latest frame.');
    els.question.focus();
    return;
  }
  on = wanted;
  if (on) releaseMarksFrame(); // live mode is about the moving camera, not the frame a detect result is shown on
  els.liveToggle.setAttribute('aria-pressed', String(on));
  els.liveToggle.textContent = on ? 'Stop live' : 'Live';
  els.root.dataset.live = String(on);
  if (on) els.livePanel.hidden = false;
  showLiveRunning();
  if (!on) {
    clearTimeout(timer);
    cancelLive(); // the live answer in progress is stopped as Stop stops it: the server stops generating it
  }
  updateControls();
  scheduleLive();
}

// Live mode stays on while the connection is down, but the card says it is paused and dims its answer, which is
// about a frame from before; it runs again once reconnected (connection.js calls this on every status change).
export function showLiveRunning() {
  const paused = on && !connected();
  els.livePanel.classList.toggle('running', on && !paused);
  els.livePanel.classList.toggle('paused', paused);
  els.livePaused.hidden = !paused;
}

export function scheduleLive() {
  clearTimeout(timer);
  if (!on || currentRequest()) return;
  const wait = Math.max(0, nextAt - performance.now());
  timer = setTimeout(liveTick, wait);
}

function liveTick() {
  if (!on || currentRequest()) return;
  if (document.hidden || !connected() || !frameSource()) {
    timer = setTimeout(liveTick, LIVE_RETRY_MS);
    return;
  }
  const question = els.question.value.trim();
  const request = question
    ? send({ event: 'query', payload: { question, live: true }, label: question, live: true })
    : send({ event: 'skill', payload: { skill: 'caption', length: 'short', live: true }, label: 'Caption', live: true });
  if (!request) return;
  nextAt = performance.now() + Math.max(liveInterval(), info.minLiveGapMs);
}
