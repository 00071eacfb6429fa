// Ask a vision-language model about what the camera sees.
// Talks to the server over Socket.IO; the wire protocol is in docs/PROTOCOL.md.

const DEFAULT_IMAGE_SIZE = 512;
const JPEG_QUALITY = 0.8;
const THUMB_SIDE = 160;
const TOKEN_KEY = 'vlm-token';
const LIVE_RETRY_MS = 500;
const LIVE_ERROR_BACKOFF_MS = 1500;
// Live mode uses at most this share of the server's per-client rate limit, leaving the rest
// (and the burst) for questions asked by hand, so it never trips the limit itself.
const LIVE_RATE_SHARE = 0.8;
// Fewer tokens than this make a tokens/s figure meaningless (two tokens in 1.3 s reads "1.5 tok/s").
const MIN_TOKENS_FOR_RATE = 3;

const $ = (id) => document.getElementById(id);

const els = {
  root: document.documentElement,
  status: $('status'),
  modelInfo: $('model-info'),
  error: $('error'),
  errorText: $('error-text'),
  stage: $('stage'),
  video: $('video'),
  frozen: $('frozen'),
  overlay: $('overlay'),
  frozenBadge: $('frozen-badge'),
  cameraMessage: $('camera-message'),
  cameraMessageText: $('camera-message-text'),
  cameraRetry: $('camera-retry'),
  snapshot: $('snapshot'),
  camera: $('camera'),
  flip: $('flip'),
  resolution: $('resolution'),
  mirror: $('mirror'),
  askForm: $('ask-form'),
  question: $('question'),
  ask: $('ask'),
  cancel: $('cancel'),
  skills: $('skills'),
  skillObject: $('skill-object'),
  liveToggle: $('live-toggle'),
  liveInterval: $('live-interval'),
  liveSize: $('live-size'),
  livePanel: $('live-panel'),
  liveQuestion: $('live-question'),
  liveAnswer: $('live-answer'),
  liveMeta: $('live-meta'),
  liveCount: $('live-count'),
  current: $('current'),
  currentQuestion: $('current-question'),
  answer: $('answer'),
  answerMeta: $('answer-meta'),
  history: $('history'),
  entryTemplate: $('entry-template'),
};

const state = {
  token: null,
  socket: null,
  capabilities: new Set(),
  imageSize: DEFAULT_IMAGE_SIZE,
  minLiveGapMs: 0, // from the server's rate limit in /api/info
  stream: null,
  cameraGeneration: 0,
  facing: 'user',
  frozen: false,
  current: null, // the one request in flight, or null
  live: false,
  liveTimer: 0,
  nextLiveAt: 0,
  liveAnswers: 0,
  marks: null, // last detect/point result drawn on the overlay
  requestCounter: 0,
};

// Counters for tests and for curious users (open the console and look at __vlmStats).
const stats = {
  sent: 0,
  liveSent: 0,
  streamEvents: 0,
  responses: 0,
  errors: 0,
  outstanding: 0, // sent but not yet answered by a final event, as the server sees it
  maxOutstanding: 0,
  liveOutstanding: 0,
  maxLiveOutstanding: 0,
  minLiveGapMs: null, // shortest time between two live frames sent back to back
  lastLiveSentAt: null,
};
window.__vlmStats = stats;

const captureCanvas = document.createElement('canvas');
const thumbCanvas = document.createElement('canvas');

// ---------------------------------------------------------------- access token

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

// ---------------------------------------------------------------- messages

// kind says what the message is about, so that fixing one problem clears only its message.
function showError(message, kind = 'request') {
  els.errorText.textContent = message;
  els.error.dataset.kind = kind;
  els.error.hidden = false;
}

function clearError(kind = null) {
  if (kind && els.error.dataset.kind !== kind) return;
  els.error.hidden = true;
  els.errorText.textContent = '';
}

// ---------------------------------------------------------------- model info

async function loadInfo() {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  try {
    const response = await fetch('/api/info', { headers, cache: 'no-store' });
    if (response.status === 401) throw new Error('the access token is missing or wrong (open the link that includes ?token=…)');
    if (!response.ok) throw new Error(`the server answered HTTP ${response.status}`);
    applyInfo(await response.json());
  } catch (err) {
    showError(`Could not load the model info: ${err.message}`, 'info');
    els.modelInfo.textContent = 'Model unknown';
    applyInfo({ capabilities: ['query'] });
    els.root.dataset.info = 'error';
  }
}

function applyInfo(info) {
  state.capabilities = new Set(info.capabilities || []);
  state.imageSize = info.image_size || DEFAULT_IMAGE_SIZE;
  if (info.model) {
    els.modelInfo.textContent = [info.model, info.device].filter(Boolean).join(' · ');
    els.modelInfo.title = `${info.model}\nbackend ${info.backend || '?'}, dtype ${info.dtype || '?'}, `
      + `frames up to ${state.imageSize} px`;
  }
  if (info.max_question_chars) els.question.maxLength = info.max_question_chars;
  if (info.rate_limit_per_s > 0) state.minLiveGapMs = 1000 / (info.rate_limit_per_s * LIVE_RATE_SHARE);
  els.liveSize.value = state.imageSize;
  showOfferedSkills();
  showGuide(info);
  els.root.dataset.info = 'loaded';
}

// The demo model says what it can answer: a hint and questions to click (other models send none).
function showGuide(info) {
  const guide = $('guide');
  guide.replaceChildren();
  guide.hidden = !info.hint;
  if (!info.hint) return;
  const hint = document.createElement('span');
  hint.textContent = info.hint;
  guide.append(hint);
  for (const question of info.suggested_questions || []) {
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = question;
    button.addEventListener('click', () => {
      els.question.value = question;
      if (!els.ask.disabled) ask();
    });
    guide.append(button);
  }
}

function showOfferedSkills() {
  let any = false;
  for (const el of els.skills.querySelectorAll('[data-requires]')) {
    const offered = el.dataset.requires.split(' ').some((skill) => state.capabilities.has(skill));
    el.hidden = !offered;
    any ||= offered;
  }
  els.skills.hidden = !any;
}

// ---------------------------------------------------------------- connection

function connect() {
  const socket = window.io(state.token ? { auth: { token: state.token } } : {});
  socket.on('connect', () => {
    setStatus('connected');
    showTransport();
    socket.io.engine.once('upgrade', showTransport);
  });
  socket.on('disconnect', () => {
    setStatus(socket.active ? 'reconnecting' : 'disconnected');
    connectionLost();
    if (socket.active) showError(LOST_CONNECTION, 'connection');
  });
  socket.on('connect_error', (err) => {
    setStatus(socket.active ? 'reconnecting' : 'disconnected');
    if (!socket.active) showError(`The server refused the connection: ${err.message}`, 'connection');
  });
  socket.io.on('reconnect_attempt', () => setStatus('reconnecting'));
  socket.on('stream', onStream);
  socket.on('response', onResponse);
  socket.on('query_error', onQueryError);
  state.socket = socket;
}

const STATUS_TEXT = { connected: 'Connected', disconnected: 'Disconnected', reconnecting: 'Reconnecting…' };
const LOST_CONNECTION = 'The connection to the server was lost (was it stopped or restarted?). '
  + 'Asking is paused until it is back; the page keeps trying to reconnect by itself.';

function setStatus(status) {
  els.status.dataset.state = status;
  els.status.textContent = STATUS_TEXT[status];
  if (status === 'connected') clearError('connection');
  updateControls();
  if (status === 'connected') scheduleLive();
}

function showTransport() {
  const name = state.socket.io.engine?.transport?.name || '';
  els.status.dataset.transport = name;
  els.status.title = name ? `Socket.IO over ${name}` : '';
}

function connectionLost() {
  stats.outstanding = 0;
  stats.liveOutstanding = 0;
  if (state.current) finish(state.current, 'error', 'The connection to the server was lost.');
}

// ---------------------------------------------------------------- camera

async function startCamera(deviceId = null) {
  const generation = ++state.cameraGeneration;
  stopCamera();
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    // Trying again cannot help here: only a different address can.
    cameraProblem('The camera only works on a secure page, and this one is plain http:// on a network address. '
      + 'Restart the server with --self-signed (or --ssl-cert and --ssl-key) and open its https:// link, '
      + 'or open the app at http://localhost on the machine it runs on.', { retry: false });
    return;
  }
  setCameraState('starting');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(deviceId), audio: false });
  } catch (err) {
    if (generation === state.cameraGeneration) cameraProblem(cameraErrorMessage(err));
    return;
  }
  if (generation !== state.cameraGeneration) {
    stream.getTracks().forEach((track) => track.stop());
    return;
  }
  useStream(stream);
  await listCameras();
}

function videoConstraints(deviceId) {
  const [width, height] = els.resolution.value.split('x').map(Number);
  const constraints = { width: { ideal: width }, height: { ideal: height } };
  if (deviceId) constraints.deviceId = { exact: deviceId };
  else constraints.facingMode = { ideal: state.facing };
  return constraints;
}

function useStream(stream) {
  state.stream = stream;
  const [track] = stream.getVideoTracks();
  track.addEventListener('ended', () => cameraProblem('The camera stopped (was it unplugged or taken by another app?).'));
  const facing = track.getSettings().facingMode;
  if (facing) setMirror(facing === 'user');
  els.video.srcObject = stream;
  els.video.play().catch(() => {}); // autoplay of a muted video is allowed; this only nudges old browsers
}

function stopCamera() {
  if (!state.stream) return;
  state.stream.getTracks().forEach((track) => track.stop());
  state.stream = null;
  els.video.srcObject = null;
}

function cameraErrorMessage(err) {
  switch (err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera access was denied. Allow the camera for this site (camera icon in the address bar, or the browser’s site settings), then press “Try again”.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera was found. Connect a camera (or pick another one), then press “Try again”.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The camera could not be started: another application may be using it.';
    default:
      return `The camera could not be started (${err.name}: ${err.message}).`;
  }
}

function cameraProblem(message, { retry = true } = {}) {
  stopCamera();
  setCameraState('error');
  els.cameraMessageText.textContent = message;
  els.cameraRetry.hidden = !retry;
  els.cameraMessage.hidden = false;
  showError(message, 'camera');
}

function setCameraState(cameraState) {
  els.root.dataset.camera = cameraState;
  if (cameraState !== 'error') els.cameraMessage.hidden = true;
  updateControls();
}

function onVideoReady() {
  const { videoWidth, videoHeight } = els.video;
  if (!videoWidth) return;
  if (!state.frozen) els.stage.style.setProperty('--aspect', `${videoWidth} / ${videoHeight}`);
  if (els.root.dataset.camera !== 'ready') {
    setCameraState('ready');
    clearError('camera');
    scheduleLive();
  }
  drawOverlay();
}

async function listCameras() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const cameras = devices.filter((device) => device.kind === 'videoinput');
  const activeId = state.stream?.getVideoTracks()[0]?.getSettings().deviceId;
  els.camera.replaceChildren(...cameras.map((camera, index) => {
    const option = new Option(camera.label || `Camera ${index + 1}`, camera.deviceId);
    option.selected = camera.deviceId === activeId;
    return option;
  }));
  els.camera.disabled = cameras.length < 2;
  els.flip.hidden = cameras.length < 2;
}

function flipCamera() {
  state.facing = state.facing === 'user' ? 'environment' : 'user';
  setMirror(state.facing === 'user');
  startCamera();
}

function activeDeviceId() {
  return state.stream?.getVideoTracks()[0]?.getSettings().deviceId || els.camera.value || null;
}

function setMirror(mirrored) {
  els.mirror.checked = mirrored;
  els.stage.classList.toggle('mirrored', mirrored);
  drawOverlay();
}

// ---------------------------------------------------------------- frames

function frameSource() {
  if (state.frozen) return { image: els.frozen, width: els.frozen.width, height: els.frozen.height };
  const video = els.video;
  if (video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA || !video.videoWidth) return null;
  return { image: video, width: video.videoWidth, height: video.videoHeight };
}

function drawScaled(canvas, source, maxSide) {
  const scale = Math.min(1, maxSide / Math.max(source.width, source.height));
  canvas.width = Math.max(1, Math.round(source.width * scale));
  canvas.height = Math.max(1, Math.round(source.height * scale));
  canvas.getContext('2d').drawImage(source.image, 0, 0, canvas.width, canvas.height);
  return canvas;
}

// The frame as it is at this very moment (or the frozen one), scaled down to maxSide.
function captureFrame(maxSide, withThumb) {
  const source = frameSource();
  if (!source) return null;
  const canvas = drawScaled(captureCanvas, source, maxSide);
  const frame = { dataUrl: canvas.toDataURL('image/jpeg', JPEG_QUALITY), aspect: canvas.width / canvas.height };
  if (withThumb) {
    const thumbSource = { image: canvas, width: canvas.width, height: canvas.height };
    frame.thumb = drawScaled(thumbCanvas, thumbSource, THUMB_SIDE).toDataURL('image/jpeg', 0.7);
  }
  return frame;
}

function freeze() {
  const source = frameSource();
  if (!source) return;
  els.frozen.width = source.width;
  els.frozen.height = source.height;
  els.frozen.getContext('2d').drawImage(source.image, 0, 0);
  state.frozen = true;
  renderFrozen();
}

function unfreeze() {
  state.frozen = false;
  renderFrozen();
  onVideoReady();
}

function renderFrozen() {
  els.frozen.hidden = !state.frozen;
  els.frozenBadge.hidden = !state.frozen;
  els.stage.classList.toggle('frozen', state.frozen);
  els.snapshot.textContent = state.frozen ? 'Unfreeze' : 'Snapshot';
  els.snapshot.setAttribute('aria-pressed', String(state.frozen));
  els.root.dataset.frozen = String(state.frozen);
}

// ---------------------------------------------------------------- overlay

// Where the frame is drawn inside the stage (object-fit: contain letterboxes it).
function contentBox(width, height, aspect) {
  if (width / height > aspect) {
    const w = height * aspect;
    return { x: (width - w) / 2, y: 0, w, h: height };
  }
  const h = width / aspect;
  return { x: 0, y: (height - h) / 2, w: width, h };
}

function drawOverlay() {
  const canvas = els.overlay;
  const { width, height } = canvas.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  canvas.dataset.marks = String(state.marks ? state.marks.objects.length + state.marks.points.length : 0);
  if (!state.marks || !width || !height) return;
  const box = contentBox(width, height, state.marks.aspect);
  const mirrored = els.mirror.checked;
  const px = (x) => box.x + (mirrored ? 1 - x : x) * box.w;
  const py = (y) => box.y + y * box.h;
  for (const object of state.marks.objects) drawBox(ctx, object, px, py, state.marks.label);
  for (const point of state.marks.points) drawDot(ctx, px(point.x), py(point.y));
}

function drawBox(ctx, object, px, py, label) {
  const left = Math.min(px(object.x_min), px(object.x_max));
  const right = Math.max(px(object.x_min), px(object.x_max));
  const top = py(object.y_min);
  const bottom = py(object.y_max);
  ctx.lineWidth = 3;
  ctx.strokeStyle = '#3ee08f';
  ctx.strokeRect(left, top, right - left, bottom - top);
  if (!label) return;
  ctx.font = '600 13px system-ui, sans-serif';
  const textWidth = ctx.measureText(label).width;
  const labelTop = top > 20 ? top - 20 : top;
  ctx.fillStyle = '#3ee08f';
  ctx.fillRect(left - 1.5, labelTop, textWidth + 10, 20);
  ctx.fillStyle = '#06140d';
  ctx.fillText(label, left + 3.5, labelTop + 14);
}

function drawDot(ctx, x, y) {
  ctx.beginPath();
  ctx.arc(x, y, 7, 0, Math.PI * 2);
  ctx.fillStyle = '#ff3d7f';
  ctx.fill();
  ctx.lineWidth = 2.5;
  ctx.strokeStyle = '#fff';
  ctx.stroke();
}

function setMarks(request, response) {
  const objects = response.objects || [];
  const points = response.points || [];
  state.marks = objects.length || points.length
    ? { objects, points, aspect: request.aspect, label: request.object }
    : null;
  drawOverlay();
}

function clearOverlay() {
  state.marks = null;
  drawOverlay();
}

// ---------------------------------------------------------------- requests

function newId() {
  state.requestCounter += 1;
  return window.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${state.requestCounter}`;
}

// Sends one query/skill about the frame as it is now. Returns the request, or null.
function send({ event, payload, label, live = false, object = null }) {
  if (!state.socket?.connected) {
    showError('Not connected to the server yet; it reconnects by itself.');
    return null;
  }
  const frame = captureFrame(live ? liveFrameSize() : state.imageSize, !live);
  if (!frame) {
    showError('There is no camera frame to send yet.');
    return null;
  }
  supersede();
  clearOverlay();
  const request = {
    id: live ? `live-${newId()}` : newId(), live, label, object, aspect: frame.aspect,
    text: '', state: 'pending', deltas: 0, deltasBeforeFinal: 0, meta: '', metaTitle: '',
  };
  request.entry = live ? null : addHistoryEntry(request, frame.thumb);
  state.current = request;
  state.socket.emit(event, { id: request.id, ...payload, image: frame.dataUrl });
  countSent(live);
  paint(request);
  updateControls();
  return request;
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

// A newer request replaces the unfinished one (the server cancels it too).
function supersede() {
  if (state.current) finish(state.current, 'cancelled', 'Superseded by a newer request.', false);
}

function ask() {
  const question = els.question.value.trim();
  if (!question) {
    els.question.focus();
    return;
  }
  clearError('request');
  send({ event: 'query', payload: { question }, label: question });
}

function caption(length) {
  clearError('request');
  const label = length === 'short' ? 'Caption' : 'Detailed caption';
  send({ event: 'skill', payload: { skill: 'caption', length }, label });
}

function locate(skill) {
  const object = els.skillObject.value.trim();
  if (!object) {
    els.skillObject.focus();
    return;
  }
  clearError('request');
  const label = `${skill === 'detect' ? 'Detect' : 'Point at'}: ${object}`;
  send({ event: 'skill', payload: { skill, object }, label, object });
}

function cancel() {
  const request = state.current;
  if (!request) return;
  state.socket.emit('cancel', { id: request.id });
  if (request.live) setLive(false);
  request.stopped = true;
  if (request.text.trim()) request.meta = 'Stopped: the answer is cut short here';
  finish(request, 'cancelled', 'Cancelled.');
}

function onStream({ id, delta }) {
  stats.streamEvents += 1;
  const request = state.current;
  if (!request || request.id !== id) return;
  request.text += delta;
  request.deltas += 1;
  request.state = 'streaming';
  paint(request);
}

function onResponse(response) {
  stats.responses += 1;
  countFinal(response.id);
  const request = state.current;
  if (!request || request.id !== response.id) return;
  request.text = response.answer;
  request.deltasBeforeFinal = request.deltas;
  describeTiming(request, response.timing);
  setMarks(request, response);
  if (request.live) state.liveAnswers += 1;
  finish(request, 'done');
}

function onQueryError(error) {
  stats.errors += 1;
  countFinal(error.id);
  const request = state.current;
  if (!request || request.id !== error.id) return;
  const outcome = error.code === 'cancelled' ? 'cancelled' : 'error';
  if (request.live && error.code === 'unauthorized') setLive(false);
  if (request.live && outcome === 'error') state.nextLiveAt = performance.now() + LIVE_ERROR_BACKOFF_MS;
  finish(request, outcome, errorText(error));
}

function errorText({ code, message }) {
  const friendly = {
    busy: 'The model is busy with other users; try again in a moment.',
    rate_limited: 'Too many requests; slow down a little.',
    timeout: 'The model took too long to answer.',
    image_too_large: 'The frame is too large for the server; choose a lower resolution.',
    unauthorized: 'Not authorised: open the link that includes ?token=….',
  }[code];
  return friendly ? `${friendly} (${message})` : message || code;
}

function finish(request, outcome, message = '', resumeLive = true) {
  request.state = outcome;
  if (message) request.error = message;
  if (state.current === request) state.current = null;
  paint(request);
  updateControls();
  if (resumeLive) scheduleLive();
}

function describeTiming(request, timing) {
  if (!timing) return;
  const parts = [`${Math.round(timing.total_ms)} ms`];
  if (timing.tokens >= MIN_TOKENS_FOR_RATE && timing.model_ms > 0) {
    parts.push(`${(timing.tokens / (timing.model_ms / 1000)).toFixed(1)} tok/s`);
  }
  request.meta = parts.join(' · ');
  request.metaTitle = ['queue_ms', 'decode_ms', 'first_token_ms', 'model_ms', 'total_ms']
    .filter((key) => timing[key] !== undefined)
    .map((key) => `${key.replace('_ms', '')}: ${Math.round(timing[key])} ms`)
    .concat(timing.tokens !== undefined ? [`tokens: ${timing.tokens}`] : [])
    .join('\n');
}

// ---------------------------------------------------------------- rendering answers

function answerText(request) {
  if (request.stopped && request.text.trim()) return request.text.trim(); // what had streamed when Stop was pressed
  if (request.state === 'cancelled' || request.state === 'error') return request.error;
  if (request.state === 'done') return request.text || '(empty answer)';
  return request.text;
}

function renderInto(view, request) {
  view.box.dataset.state = request.state;
  view.question.textContent = request.label;
  view.answer.textContent = answerText(request);
  view.meta.textContent = request.meta;
  view.box.dataset.stopped = String(Boolean(request.stopped));
  view.meta.title = request.metaTitle;
}

function paint(request) {
  if (request.live) {
    paintLive(request);
    return;
  }
  renderInto(request.entry, request);
  request.entry.box.dataset.deltas = String(request.deltas);
  request.entry.box.dataset.deltasBeforeFinal = String(request.deltasBeforeFinal);
  if (request === latestAsked()) renderInto(currentView, request);
}

// The live panel keeps showing the previous answer until the next one starts arriving.
function paintLive(request) {
  if (request.state === 'pending' || request.state === 'cancelled') {
    liveView.box.dataset.state = request.state;
  } else {
    renderInto(liveView, request);
  }
  els.liveCount.textContent = String(state.liveAnswers);
}

function latestAsked() {
  const first = els.history.firstElementChild;
  return first ? first.request : null;
}

const liveView = { box: els.livePanel, question: els.liveQuestion, answer: els.liveAnswer, meta: els.liveMeta };
const currentView = { box: els.current, question: els.currentQuestion, answer: els.answer, meta: els.answerMeta };

// ---------------------------------------------------------------- history

function addHistoryEntry(request, thumb) {
  const item = els.entryTemplate.content.firstElementChild.cloneNode(true);
  item.dataset.id = request.id;
  item.request = request;
  item.querySelector('.thumb').src = thumb;
  item.querySelector('.copy').addEventListener('click', (event) => copyText(entryText(request), event.currentTarget));
  els.history.prepend(item);
  return {
    box: item,
    question: item.querySelector('.question'),
    answer: item.querySelector('.answer'),
    meta: item.querySelector('.meta'),
  };
}

function entryText(request) {
  const lines = [`Q: ${request.label}`, `A: ${answerText(request)}`];
  if (request.meta) lines.push(`(${request.meta})`);
  return lines.join('\n');
}

function allEntriesText() {
  return [...els.history.children].reverse().map((item) => entryText(item.request)).join('\n\n');
}

function clearHistory() {
  if (state.current && !state.current.live) cancel();
  els.history.replaceChildren();
  renderInto(currentView, { state: 'idle', label: '', error: '', text: '', meta: '', metaTitle: '' });
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    copyWithSelection(text);
  }
  flash(button, 'Copied');
}

// For browsers without the async clipboard (e.g. plain http on a LAN address).
function copyWithSelection(text) {
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.className = 'offscreen';
  document.body.append(area);
  area.select();
  document.execCommand('copy');
  area.remove();
}

function flash(button, text) {
  const original = button.dataset.label || button.textContent;
  button.dataset.label = original;
  button.textContent = text;
  clearTimeout(button.flashTimer);
  button.flashTimer = setTimeout(() => { button.textContent = original; }, 1200);
}

// ---------------------------------------------------------------- live mode

function liveFrameSize() {
  const size = Number(els.liveSize.value);
  return Number.isFinite(size) && size >= 32 ? size : state.imageSize;
}

function liveInterval() {
  const interval = Number(els.liveInterval.value);
  return Number.isFinite(interval) && interval > 0 ? interval : 0;
}

function setLive(on) {
  if (on && !els.question.value.trim() && !state.capabilities.has('caption')) {
    showError('Type a question first: live mode keeps asking it about the latest frame.');
    els.question.focus();
    return;
  }
  state.live = on;
  els.liveToggle.setAttribute('aria-pressed', String(on));
  els.liveToggle.textContent = on ? 'Stop live' : 'Live';
  els.root.dataset.live = String(on);
  if (on) els.livePanel.hidden = false;
  els.livePanel.classList.toggle('running', on);
  if (!on) clearTimeout(state.liveTimer);
  scheduleLive();
}

// Backpressure: a live frame is sent only when nothing else is in flight.
function scheduleLive() {
  clearTimeout(state.liveTimer);
  if (!state.live || state.current) return;
  const wait = Math.max(0, state.nextLiveAt - performance.now());
  state.liveTimer = setTimeout(liveTick, wait);
}

function liveTick() {
  if (!state.live || state.current) return;
  if (document.hidden || !state.socket?.connected || !frameSource()) {
    state.liveTimer = setTimeout(liveTick, LIVE_RETRY_MS);
    return;
  }
  const question = els.question.value.trim();
  const request = question
    ? send({ event: 'query', payload: { question, live: true }, label: question, live: true })
    : send({ event: 'skill', payload: { skill: 'caption', length: 'short', live: true }, label: 'Caption', live: true });
  if (!request) return;
  state.nextLiveAt = performance.now() + Math.max(liveInterval(), state.minLiveGapMs);
}

// ---------------------------------------------------------------- controls

function updateControls() {
  const connected = Boolean(state.socket?.connected);
  const haveFrame = els.root.dataset.camera === 'ready' || state.frozen;
  els.ask.disabled = !connected || !haveFrame;
  els.ask.title = !connected ? 'Not connected to the server' : !haveFrame ? 'No camera frame yet' : '';
  els.cancel.disabled = !state.current;
  els.snapshot.disabled = !haveFrame;
  for (const button of els.skills.querySelectorAll('button')) button.disabled = !connected || !haveFrame;
  els.root.dataset.busy = String(Boolean(state.current));
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
    locate(state.capabilities.has('detect') ? 'detect' : 'point');
  });
  $('point').addEventListener('click', () => locate('point'));
  els.liveToggle.addEventListener('click', () => setLive(!state.live));
  els.snapshot.addEventListener('click', () => (state.frozen ? unfreeze() : freeze()));
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
  state.token = takeToken();
  bindEvents();
  setMirror(true);
  renderFrozen();
  updateControls();
  loadInfo();
  connect();
  startCamera();
  // What watch mode (static/watch.js) uses of this page: its connection and its frames.
  window.vlmPage = {
    socket: state.socket,
    token: state.token,
    captureFrame: (maxSide) => captureFrame(maxSide, false),
    frameSize: liveFrameSize,
    interval: liveInterval,
    showError,
  };
}

main();
