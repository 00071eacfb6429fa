// Which buttons work right now: it depends on the connection, the camera and the request in flight.

import { connected } from './connection.js';
import { els } from './dom.js';
import { isFrozen } from './camera.js';
import { currentRequest } from './requests.js';

export function updateControls() {
  const online = connected();
  const haveFrame = els.root.dataset.camera === 'ready' || isFrozen();
  els.ask.disabled = !online || !haveFrame;
  els.ask.title = !online ? 'Not connected to the server' : !haveFrame ? 'No camera frame yet' : '';
  els.cancel.disabled = !currentRequest();
  els.snapshot.disabled = !haveFrame;
  for (const button of els.skills.querySelectorAll('button')) button.disabled = !online || !haveFrame;
  els.root.dataset.busy = String(Boolean(currentRequest()));
}
