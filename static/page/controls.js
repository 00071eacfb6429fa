// Which buttons work right now: it depends on the connection, the camera, the model and the request in flight.

import { connected } from './connection.js';
import { els } from './dom.js';
import { isFrozen } from './camera.js';
import { isLive } from './live.js';
import { currentRequest } from './requests.js';

const LIVE_TITLE = els.liveToggle.title;

export function updateControls() {
  const focused = document.activeElement;
  const keyboardFocus = focused instanceof HTMLElement && focusVisible(focused);
  const haveFrame = els.root.dataset.camera === 'ready' || isFrozen();
  const cannotAsk = whyCannotAsk(haveFrame);
  els.ask.disabled = Boolean(cannotAsk);
  els.ask.title = cannotAsk;
  els.askBlocked.textContent = cannotAsk;
  els.askBlocked.hidden = !cannotAsk;
  // Live needs what Ask needs to start; once on, it can always be switched off (it waits for a frame meanwhile).
  const liveBlocked = Boolean(cannotAsk) && !isLive();
  els.liveToggle.disabled = liveBlocked;
  els.liveToggle.title = liveBlocked ? cannotAsk : LIVE_TITLE;
  els.cancel.disabled = !currentRequest();
  els.snapshot.disabled = !haveFrame;
  for (const button of els.skills.querySelectorAll('button')) button.disabled = Boolean(cannotAsk);
  els.root.dataset.busy = String(Boolean(currentRequest()));
  // A control disabled under keyboard focus (Stop, pressed with Enter) would drop focus to <body>; the question
  // field is where a keyboard user goes on from. A pointer's focus is left alone (it would open a phone's keyboard).
  if (keyboardFocus && focused.disabled) els.question.focus();
}

// Empty when a question can be asked now. A model still loading would answer every question with an error.
function whyCannotAsk(haveFrame) {
  if (!connected()) return 'Not connected to the server';
  if (!haveFrame) return 'No camera frame yet';
  if (els.root.dataset.info === 'loading') return 'The model is still loading…';
  return '';
}

function focusVisible(element) {
  try {
    return element.matches(':focus-visible');
  } catch {
    return true; // a browser without :focus-visible
  }
}
