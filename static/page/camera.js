// The camera and its frames: starting and switching cameras, snapshot (freeze), and capturing a frame to send.

import { updateControls } from './controls.js';
import { els } from './dom.js';
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

export function isFrozen() {
  return frozen;
}

export async function startCamera(deviceId = null) {
  const started = ++generation;
  stopCamera();
  clearOverlay(); // marks belong to a frame of the camera (or resolution) being left
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    // Trying again cannot help here: only a different address can.
    cameraProblem('The camera only works on a secure page, and this one is plain http:// on a network address. '
      + 'Restart the server with --self-signed (or --ssl-cert and --ssl-key) and open its https:// link, '
      + 'or open the app at http://localhost on the machine it runs on.', { retry: false });
    return;
  }
  setCameraState('starting');
  let opened;
  try {
    opened = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(deviceId), audio: false });
  } catch (err) {
    if (started === generation) cameraProblem(cameraErrorMessage(err));
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
  track.addEventListener('ended', () => cameraProblem('The camera stopped (was it unplugged or taken by another app?).'));
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
  els.cameraMessage.hidden = false; // said here only, where the camera would be: the banner is for other errors
  listCameras(); // another camera may work, and the picker should not keep naming one that does not
}

function setCameraState(cameraState) {
  els.root.dataset.camera = cameraState;
  if (cameraState !== 'error') els.cameraMessage.hidden = true;
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
  const cameras = devices.filter((device) => device.kind === 'videoinput' && device.deviceId);
  const activeId = stream?.getVideoTracks()[0]?.getSettings().deviceId;
  const options = cameras.map((camera, index) => {
    const option = new Option(camera.label || `Camera ${index + 1}`, camera.deviceId);
    option.selected = camera.deviceId === activeId;
    return option;
  });
  els.camera.replaceChildren(...(options.length ? options : [new Option('No camera', '')]));
  els.camera.disabled = cameras.length < 2;
  els.flip.hidden = cameras.length < 2;
}

export function flipCamera() {
  facing = facing === 'user' ? 'environment' : 'user';
  setMirror(facing === 'user');
  startCamera();
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

export function frameSource() {
  if (frozen) return { image: els.frozen, width: els.frozen.width, height: els.frozen.height };
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
export function captureFrame(maxSide, withThumb) {
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

export function toggleFrozen() {
  if (frozen) unfreeze();
  else freeze();
}

function freeze() {
  const source = frameSource();
  if (!source) return;
  els.frozen.width = source.width;
  els.frozen.height = source.height;
  els.frozen.getContext('2d').drawImage(source.image, 0, 0);
  frozen = true;
  renderFrozen();
}

function unfreeze() {
  frozen = false;
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
