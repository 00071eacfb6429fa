// The camera and its frames: starting and switching cameras, snapshot (freeze), and capturing a frame to send.

import { updateControls } from './controls.js';
import { els, keyboardFocused } from './dom.js';
import { scheduleLive } from './live.js';
import { clearOverlay, drawOverlay } from './overlay.js';

const JPEG_QUALITY = 0.8;
const THUMB_SIDE = 160;

const captureCanvas = document.createElement('canvas');
const thumbCanvas = document.createElement('canvas');

let stream = null;
let generation = 0; // a newer startCamera makes an older one's late stream unwanted
let facing = 'user';
let frozen = false;
let frozenCount = 0; // each freeze is a new frame: a result is drawn only over the one it was found on
let heldForMarks = 0; // the freeze a detect/point made to show its result on its frame (its frozenCount), or 0

// Why asking is blocked while the camera has a problem, shown under Ask and said when Enter is pressed (controls.js).
const PROBLEM_REASONS = {
  denied: 'Camera access blocked',
  missing: 'No camera found',
  busy: 'Camera in use by another app',
  insecure: 'The camera needs an https:// page',
  failed: 'The camera is not working',
};

export function isFrozen() {
  return frozen;
}

// The frozen frame shown (a number that changes with every freeze), or null while the video moves.
export function frozenFrameId() {
  return frozen ? frozenCount : null;
}

export function cameraProblemReason() {
  return els.root.dataset.camera === 'error' ? PROBLEM_REASONS[els.root.dataset.cameraProblem] || '' : '';
}

export async function startCamera(deviceId = null) {
  const started = ++generation;
  stopCamera();
  clearOverlay(); // marks belong to a frame of the camera (or resolution) being left
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    // Trying again cannot help here: only a different address can.
    cameraProblem({
      kind: 'insecure',
      message: 'The camera only works on a secure page, and this one is plain http:// on a network address. '
        + 'Restart the server with --self-signed (or --ssl-cert and --ssl-key) and open its https:// link, '
        + 'or open the app at http://localhost on the machine it runs on.',
    }, { retry: false });
    return;
  }
  setCameraState('starting');
  let opened;
  try {
    opened = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(deviceId), audio: false });
  } catch (err) {
    if (started === generation) cameraProblem(cameraError(err));
    return;
  }
  if (started !== generation) {
    opened.getTracks().forEach((track) => track.stop());
    return;
  }
  useStream(opened);
  await listCameras();
}

function videoConstraints(deviceId) {
  const [width, height] = els.resolution.value.split('x').map(Number);
  const constraints = { width: { ideal: width }, height: { ideal: height } };
  if (deviceId) constraints.deviceId = { exact: deviceId };
  else constraints.facingMode = { ideal: facing };
  return constraints;
}

function useStream(opened) {
  stream = opened;
  const [track] = opened.getVideoTracks();
  track.addEventListener('ended', () => cameraProblem({
    kind: 'failed', message: 'The camera stopped (was it unplugged or taken by another app?).',
  }));
  const trackFacing = track.getSettings().facingMode;
  if (trackFacing) setMirror(trackFacing === 'user');
  els.video.srcObject = opened;
  els.video.play().catch(() => {}); // autoplay of a muted video is allowed; this only nudges old browsers
}

function stopCamera() {
  if (!stream) return;
  stream.getTracks().forEach((track) => track.stop());
  stream = null;
  els.video.srcObject = null;
}

function cameraError(err) {
  switch (err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return { kind: 'denied', message: 'Camera access was denied. Allow the camera for this site (camera icon in the address bar, or the browser’s site settings), then press “Try again”.' };
    case 'NotFoundError':
    case 'OverconstrainedError':
      return { kind: 'missing', message: 'No camera was found. Connect a camera (or pick another one), then press “Try again”.' };
    case 'NotReadableError':
    case 'AbortError':
      return { kind: 'busy', message: 'The camera could not be started: another application may be using it.' };
    default:
      return { kind: 'failed', message: `The camera could not be started (${err.name}: ${err.message}).` };
  }
}

// Shown where the camera would be; its text is an alert (index.html), so a screen reader says it as it appears.
function cameraProblem({ kind, message }, { retry = true } = {}) {
  stopCamera();
  els.root.dataset.cameraProblem = kind;
  setCameraState('error');
  els.cameraMessageText.textContent = message;
  els.cameraRetry.hidden = !retry;
  els.cameraMessage.hidden = false; // said here only, where the camera would be: the banner is for other errors
  listCameras(); // another camera may work, and the picker should not keep naming one that does not
}

function setCameraState(cameraState) {
  els.root.dataset.camera = cameraState;
  if (cameraState !== 'error') {
    // "Try again" pressed with the keyboard goes away with its message: focus goes on to the question, not to
    // <body> (where the next Tab starts over at the top). A pointer's focus is left (it would open a phone's keyboard).
    const retried = keyboardFocused(els.cameraRetry);
    els.cameraMessage.hidden = true;
    delete els.root.dataset.cameraProblem;
    if (retried) els.question.focus();
  }
  updateControls();
}

export function onVideoReady() {
  const { videoWidth, videoHeight } = els.video;
  if (!videoWidth) return;
  if (!frozen) els.stage.style.setProperty('--aspect', `${videoWidth} / ${videoHeight}`);
  if (els.root.dataset.camera !== 'ready') {
    setCameraState('ready');
    scheduleLive();
  }
  showDeliveredSize(videoWidth, videoHeight);
  drawOverlay();
}

// Cameras deliver the nearest size they can, often not the one asked for: the picker says so, briefly enough
// for a phone's width ("640×480 → 320×240"), and its tooltip in words.
function showDeliveredSize(width, height) {
  let shortfall = '';
  for (const option of els.resolution.options) {
    const [askedWidth, askedHeight] = option.value.split('x').map(Number);
    // A phone held upright gives the size turned a quarter: that is the size asked for.
    const delivered = Math.max(width, height) === Math.max(askedWidth, askedHeight)
      && Math.min(width, height) === Math.min(askedWidth, askedHeight);
    const short = option.selected && !delivered;
    option.textContent = sizeText(askedWidth, askedHeight) + (short ? ` → ${sizeText(width, height)}` : '');
    if (short) shortfall = `The camera gives ${sizeText(width, height)}, not the ${sizeText(askedWidth, askedHeight)} asked for`;
  }
  els.resolution.title = shortfall;
}

function sizeText(width, height) {
  return `${width}×${height}`;
}

export async function listCameras() {
  const devices = await navigator.mediaDevices?.enumerateDevices?.() ?? []; // none on an insecure page
  // Before the camera is allowed, cameras are listed without ids, and none of them can be picked.
  const listed = devices.filter((device) => device.kind === 'videoinput');
  const cameras = listed.filter((device) => device.deviceId);
  const activeId = stream?.getVideoTracks()[0]?.getSettings().deviceId;
  const options = cameras.map((camera, index) => {
    const option = new Option(camera.label || `Camera ${index + 1}`, camera.deviceId);
    option.selected = camera.deviceId === activeId;
    return option;
  });
  els.camera.replaceChildren(...(options.length ? options : [new Option(noCameraText(listed.length), '')]));
  els.camera.disabled = cameras.length < 2;
  els.flip.hidden = cameras.length < 2;
  // A phone's cameras say which way they face, and Flip turns to the other side; cameras that do not (two
  // webcams on a laptop) are stepped through instead, under a name that says so.
  const facesKnown = Boolean(activeFacing());
  els.flip.textContent = facesKnown ? 'Flip' : 'Next camera';
  els.flip.title = facesKnown ? 'Switch between front and back camera' : 'Switch to the next camera';
}

// The picker with nothing to pick: a camera that is there but not allowed is not "no camera".
function noCameraText(listed) {
  if (els.root.dataset.cameraProblem === 'denied') return 'Camera blocked';
  return listed ? 'Camera not allowed yet' : 'No camera';
}

function activeFacing() {
  return stream?.getVideoTracks()[0]?.getSettings().facingMode || '';
}

// Front to back and back again on a phone (useStream mirrors the front one only); the next camera in the picker
// where the cameras do not say which way they face. The mirror changes only with the side the camera faces.
export function flipCamera() {
  const faces = activeFacing();
  const ids = [...els.camera.options].map((option) => option.value).filter(Boolean);
  if (faces || !stream || ids.length < 2) {
    facing = (faces || facing) === 'user' ? 'environment' : 'user';
    startCamera();
    return;
  }
  startCamera(ids[(ids.indexOf(activeDeviceId()) + 1) % ids.length]);
}

export function activeDeviceId() {
  return stream?.getVideoTracks()[0]?.getSettings().deviceId || els.camera.value || null;
}

export function setMirror(mirrored) {
  els.mirror.checked = mirrored;
  els.stage.classList.toggle('mirrored', mirrored);
  drawOverlay();
}

// ---------------------------------------------------------------- frames

// What a question is about: the frozen frame while there is one, unless the camera itself is asked for (live).
export function frameSource(camera = false) {
  if (frozen && !camera) return { image: els.frozen, width: els.frozen.width, height: els.frozen.height };
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
export function captureFrame(maxSide, withThumb, camera = false) {
  const source = frameSource(camera);
  if (!source) return null;
  const canvas = drawScaled(captureCanvas, source, maxSide);
  const frame = { dataUrl: canvas.toDataURL('image/jpeg', JPEG_QUALITY), aspect: canvas.width / canvas.height };
  if (withThumb) {
    const thumbSource = { image: canvas, width: canvas.width, height: canvas.height };
    frame.thumb = drawScaled(thumbCanvas, thumbSource, THUMB_SIDE).toDataURL('image/jpeg', 0.7);
  }
  return frame;
}

export function toggleFrozen() {
  if (frozen) unfreeze();
  else freeze();
}

// Detect and point freeze the frame they are asked about, so that their boxes and dots are drawn over what they
// were found on (over the moving video they pointed at nothing a moment later). Returns the hold, for
// releaseMarksFrame, or 0 where the frame was frozen already (a Snapshot, which the user unfreezes).
export function holdFrameForMarks() {
  releaseMarksFrame(); // a new detect is about the camera as it is now, not the last result's frame
  if (frozen || !freeze()) return 0;
  heldForMarks = frozenCount;
  return heldForMarks;
}

// Back to the moving video, if the frame was frozen to show a result (by that hold, where one is given).
export function releaseMarksFrame(hold = null) {
  if (!frozen || !heldForMarks || (hold !== null && hold !== heldForMarks)) return;
  unfreeze();
}

function freeze() {
  const source = frameSource();
  if (!source) return false;
  els.frozen.width = source.width;
  els.frozen.height = source.height;
  els.frozen.getContext('2d').drawImage(source.image, 0, 0);
  frozen = true;
  frozenCount += 1;
  renderFrozen();
  return true;
}

function unfreeze() {
  frozen = false;
  heldForMarks = 0;
  clearOverlay(); // marks found on the frozen frame do not belong to the live one
  renderFrozen();
  onVideoReady();
}

export function renderFrozen() {
  els.frozen.hidden = !frozen;
  els.frozenBadge.hidden = !frozen;
  els.stage.classList.toggle('frozen', frozen);
  els.snapshot.textContent = frozen ? 'Unfreeze' : 'Snapshot';
  els.snapshot.setAttribute('aria-pressed', String(frozen));
  els.root.dataset.frozen = String(frozen);
}
