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
import { ask, cancel, caption, locate } from './page/requests.js';

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

function bindEvents() {
  els.askForm.addEventListener('submit', (event) => {
    event.preventDefault();
    ask();
  });
  els.question.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') cancel();
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
  // What watch mode (static/watch.js) uses of this page: its connection and its frames.
  window.vlmPage = {
    socket,
    token,
    captureFrame: (maxSide) => captureFrame(maxSide, false),
    frameSize: liveFrameSize,
    interval: liveInterval,
    showError,
  };
}

main();
