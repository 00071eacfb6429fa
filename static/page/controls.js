// Which buttons work right now: it depends on the connection, the camera, the model, the question and the request
// in flight.

import { connected } from './connection.js';
import { els, keyboardFocused } from './dom.js';
import { cameraProblemReason, isFrozen } from './camera.js';
import { info } from './info.js';
import { isLive } from './live.js';
import { clearError, showError } from './messages.js';
import { currentRequest } from './requests.js';

const LIVE_TITLE = els.liveToggle.title;

export function updateControls() {
  const focused = document.activeElement;
  const keyboardFocus = keyboardFocused(focused);
  const haveFrame = els.root.dataset.camera === 'ready' || isFrozen();
  const cannotAsk = whyCannotAsk(haveFrame);
  // A question over the server's limit is kept whole where it can be seen and cut, not cut short unseen (a
  // maxlength did that to a pasted one); Ask and Live wait for it to fit. Caption, Describe and Detect do not ask it.
  const cannotAskThis = cannotAsk || questionProblem();
  els.ask.disabled = Boolean(cannotAskThis);
  els.ask.title = cannotAskThis;
  els.askBlocked.textContent = cannotAskThis;
  els.askBlocked.hidden = !cannotAskThis;
  els.question.setAttribute('aria-invalid', String(Boolean(questionProblem())));
  // Live needs what Ask needs to start; once on, it can always be switched off (it waits for a frame meanwhile).
  const liveBlocked = Boolean(cannotAskThis) && !isLive();
  els.liveToggle.disabled = liveBlocked;
  els.liveToggle.title = liveBlocked ? cannotAskThis : LIVE_TITLE;
  els.cancel.disabled = !currentRequest();
  els.snapshot.disabled = !haveFrame;
  for (const button of els.skills.querySelectorAll('button')) button.disabled = Boolean(cannotAsk);
  els.root.dataset.busy = String(Boolean(currentRequest()));
  if (!cannotAskThis) clearError('blocked');
  // A control disabled under keyboard focus (Stop, pressed with Enter) would drop focus to <body>; the question
  // field is where a keyboard user goes on from. A pointer's focus is left alone (it would open a phone's keyboard).
  if (keyboardFocus && focused.disabled) els.question.focus();
}

// Empty when a question can be asked now. A model still loading would answer every question with an error.
function whyCannotAsk(haveFrame) {
  if (!connected()) return 'Not connected to the server';
  if (!haveFrame) return cameraProblemReason() || 'No camera frame yet';
  if (els.root.dataset.info === 'loading') return 'The model is still loading…';
  return '';
}

// Counted as the server counts it: characters (not UTF-16 units), spaces at the ends left out.
function questionProblem() {
  if (!info.maxQuestionChars) return '';
  const length = [...els.question.value.trim()].length;
  if (length <= info.maxQuestionChars) return '';
  return `The question is too long: ${length} characters, at most ${info.maxQuestionChars}`;
}

// Enter in the question while Ask is disabled submits nothing (the browser skips a disabled default button): the
// reason is said, in the banner (an alert), rather than nothing happening.
function explainBlockedEnter(event) {
  if (event.key !== 'Enter' || event.isComposing || !els.ask.disabled) return;
  event.preventDefault();
  const reason = els.askBlocked.textContent;
  if (!reason) return;
  clearError('blocked'); // emptied and shown again, so that pressing Enter twice says it twice
  setTimeout(() => showError(`Cannot ask yet: ${reason}.`, 'blocked'), 60);
}

els.question.addEventListener('keydown', explainBlockedEnter);
els.question.addEventListener('input', () => updateControls());
