// Ask a vision-language model about what the camera sees.
// Talks to the server over Socket.IO; the wire protocol is in docs/PROTOCOL.md.
// This entry point wires the page's modules (static/page/) to its controls:
//   camera.js   camera, snapshot and the frames sent     overlay.js  detect boxes and point dots
//   requests.js the request in flight and its answers    history.js  how answers are shown, copy
//   live.js     live mode                                connection.js, info.js, controls.js, messages.js

import { activeDeviceId, captureFrame, flipCamera, listCameras, onVideoReady, renderFrozen, setMirror, startCamera,
  toggleFrozen } from './page/camera.js';
import { connect } from './page/connection.js';
import { updateControls } from './page/controls.js';
import { $, els } from './page/dom.js';
import { allEntriesText, clearHistory, copyText } from './page/history.js';
import { info, loadInfo } from './page/info.js';
import { isLive, liveFrameSize, liveInterval, scheduleLive, setLive } from './page/live.js';
import { clearError, showError } from './page/messages.js';
import { drawOverlay } from './page/overlay.js';
import { ask, cancel, caption, currentRequest, locate } from './page/requests.js';

const TOKEN_KEY = 'vlm-token';

// The ?token= of the link is kept for this tab and taken out of the address bar.
function takeToken() {
  const url = new URL(window.location.href);
  if (url.searchParams.has('token')) {
    const token = url.searchParams.get('token');
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete('token');
    history.replaceState(history.state, '', url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

// Inputs whose keys are not text to edit: Esc means nothing special there.
const NOT_TEXT = new Set(['button', 'checkbox', 'color', 'file', 'image', 'radio', 'range', 'reset', 'submit']);

// Esc stops the answer in progress from anywhere on the page (the Stop button's tooltip says so), but not where
// Esc already has a meaning: in a field being edited other than the question and object fields, in a select or
// its picker, or in an open dialog.
function escapeStops(event) {
  if (event.key !== 'Escape' || event.defaultPrevented || event.isComposing) return false;
  if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return false;
  if (document.querySelector('dialog[open], [aria-modal="true"]')) return false;
  const target = event.target instanceof Element ? event.target : null;
  if (!target || target === els.question || target === els.skillObject) return true;
  if (target.isContentEditable || target.closest('select, textarea')) return false;
  return !(target instanceof HTMLInputElement && !NOT_TEXT.has(target.type));
}

function bindEvents() {
  els.askForm.addEventListener('submit', (event) => {
    event.preventDefault();
    ask();
  });
  document.addEventListener('keydown', (event) => {
    if (escapeStops(event) && currentRequest()) {
      event.preventDefault();
      cancel();
    }
  });
  els.cancel.addEventListener('click', cancel);
  $('caption-short').addEventListener('click', () => caption('short'));
  $('caption-normal').addEventListener('click', () => caption('normal'));
  els.skills.addEventListener('submit', (event) => {
    event.preventDefault();
    locate(info.capabilities.has('detect') ? 'detect' : 'point');
  });
  $('point').addEventListener('click', () => locate('point'));
  els.liveToggle.addEventListener('click', () => setLive(!isLive()));
  els.snapshot.addEventListener('click', toggleFrozen);
  els.camera.addEventListener('change', () => startCamera(els.camera.value));
  els.flip.addEventListener('click', flipCamera);
  els.resolution.addEventListener('change', () => startCamera(activeDeviceId()));
  els.mirror.addEventListener('change', () => setMirror(els.mirror.checked));
  // Reading them puts a value typed outside the fields' bounds back within them, where it can be seen.
  els.liveInterval.addEventListener('change', () => liveInterval());
  els.liveSize.addEventListener('change', () => liveFrameSize());
  els.cameraRetry.addEventListener('click', () => startCamera());
  $('error-close').addEventListener('click', () => clearError());
  $('copy-all').addEventListener('click', (event) => copyText(allEntriesText(), event.currentTarget));
  $('clear-history').addEventListener('click', clearHistory);
  els.video.addEventListener('loadeddata', onVideoReady);
  els.video.addEventListener('resize', onVideoReady);
  new ResizeObserver(drawOverlay).observe(els.stage);
  navigator.mediaDevices?.addEventListener?.('devicechange', () => listCameras());
  document.addEventListener('visibilitychange', scheduleLive);
}

function main() {
  const token = takeToken();
  bindEvents();
  setMirror(true);
  renderFrozen();
  updateControls();
  loadInfo(token);
  const socket = connect(token);
  startCamera();
  // What watch mode (static/watch.js) uses of this page: its connection and the camera's frames (a watch watches
  // the camera, also while the stage shows a frozen frame).
  window.vlmPage = {
    socket,
    token,
    captureFrame: (maxSide) => captureFrame(maxSide, false, true),
    frameSize: liveFrameSize,
    interval: liveInterval,
    showError,
  };
}

main();
