// The one error banner. kind says what the message is about, so that fixing one problem clears only its message.

import { els } from './dom.js';

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
