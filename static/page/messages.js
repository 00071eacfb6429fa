// The one error banner, and what a screen reader is told as it happens (#announcer).
// kind says what a banner's message is about, so that fixing one problem clears only its message.

import { els } from './dom.js';

// A screen reader says a live region's text when it changes: the region is emptied and then filled a moment
// later, so that the same words said twice (the same answer to a question asked again) are said twice.
const ANNOUNCE_DELAY_MS = 60;
let announceTimer = 0;

export function announce(text) {
  clearTimeout(announceTimer);
  els.announcer.textContent = '';
  if (!text) return;
  announceTimer = setTimeout(() => { els.announcer.textContent = text; }, ANNOUNCE_DELAY_MS);
}

export function showError(message, kind = 'request') {
  els.errorText.textContent = message;
  els.error.dataset.kind = kind;
  els.error.hidden = false;
}

export function clearError(kind = null) {
  if (kind && els.error.dataset.kind !== kind) return;
  els.error.hidden = true;
  els.errorText.textContent = '';
}
