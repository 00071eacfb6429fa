// Which buttons work right now: it depends on the connection, the camera and the request in flight.

import { connected } from './connection.js';
import { els } from './dom.js';
import { isFrozen } from './camera.js';
import { isLive } from './live.js';
import { currentRequest } from './requests.js';

const LIVE_TITLE = els.liveToggle.title;

export function updateControls() {
  const online = connected();
  const haveFrame = els.root.dataset.camera === 'ready' || isFrozen();
  const cannotAsk = !online ? 'Not connected to the server' : !haveFrame ? 'No camera frame yet' : '';
  els.ask.disabled = Boolean(cannotAsk);
  els.ask.title = cannotAsk;
  // Live needs what Ask needs to start; once on, it can always be switched off (it waits for a frame meanwhile).
  const liveBlocked = Boolean(cannotAsk) && !isLive();
  els.liveToggle.disabled = liveBlocked;
  els.liveToggle.title = liveBlocked ? cannotAsk : LIVE_TITLE;
  els.cancel.disabled = !currentRequest();
  els.snapshot.disabled = !haveFrame;
  for (const button of els.skills.querySelectorAll('button')) button.disabled = !online || !haveFrame;
  els.root.dataset.busy = String(Boolean(currentRequest()));
}
