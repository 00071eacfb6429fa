// What the server says about its model (/api/info): capabilities, frame size, rate limit, the demo's guide.

import { updateControls } from './controls.js';
import { $, els } from './dom.js';
import { clearError, showError } from './messages.js';
import { serverPath } from './paths.js';
import { ask } from './requests.js';

const DEFAULT_IMAGE_SIZE = 512;
// Live mode uses at most this share of the server's per-client rate limit, leaving the rest
// (and the burst) for questions asked by hand, so it never trips the limit itself.
const LIVE_RATE_SHARE = 0.8;
// While the server loads its model (a first moondream2 run downloads it), /api/info answers 503: ask again.
const LOADING_RETRY_MS = 2000;

// Written only by applyInfo; read by the other modules.
export const info = {
  capabilities: new Set(),
  imageSize: DEFAULT_IMAGE_SIZE,
  minLiveGapMs: 0, // from the server's rate limit
  maxQuestionChars: 0, // the server's limit on a question, 0 where it gave none
};

let loads = 0; // a newer loadInfo (after a reconnect) makes an older one's answer and retries unwanted
let applied = false;

// Called at start and again on every reconnect: the server may have been restarted with another model.
export async function loadInfo(token) {
  const load = ++loads;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    const response = await fetch(serverPath('/api/info'), { headers, cache: 'no-store' });
    if (load !== loads) return;
    if (response.status === 503) {
      setInfoState('loading');
      setTimeout(() => { if (load === loads) loadInfo(token); }, LOADING_RETRY_MS);
      return;
    }
    if (response.status === 401) throw new Error('the access token is missing or wrong (open the link that includes ?token=…)');
    if (!response.ok) throw new Error(`the server answered HTTP ${response.status}`);
    const served = await response.json();
    if (load !== loads) return;
    clearError('info');
    applyInfo(served);
  } catch (err) {
    if (load !== loads) return;
    showError(`Could not load the model info: ${err.message}`, 'info');
    els.modelInfo.textContent = 'Model unknown';
    applyInfo({ capabilities: ['query'] });
    setInfoState('error');
  }
}

// Everything is set from what this server said, nothing kept from a model served before a restart.
function applyInfo(served) {
  const previousImageSize = info.imageSize;
  info.capabilities = new Set(served.capabilities || []);
  info.imageSize = served.image_size || DEFAULT_IMAGE_SIZE;
  if (served.model) {
    els.modelInfo.textContent = [served.model, served.device].filter(Boolean).join(' · ');
    els.modelInfo.title = `${served.model}\nbackend ${served.backend || '?'}, dtype ${served.dtype || '?'}, `
      + `frames up to ${info.imageSize} px`;
  } else {
    els.modelInfo.title = '';
  }
  // Not a maxlength, which cut a pasted question short without a word: controls.js says when it is too long.
  info.maxQuestionChars = served.max_question_chars || 0;
  info.minLiveGapMs = served.rate_limit_per_s > 0 ? 1000 / (served.rate_limit_per_s * LIVE_RATE_SHARE) : 0;
  // A live frame size the user chose is kept across a reconnect to the same model's frame size.
  if (!applied || info.imageSize !== previousImageSize) els.liveSize.value = info.imageSize;
  applied = true;
  showOfferedSkills();
  showGuide(served);
  setInfoState('loaded');
}

// Asking waits while the model loads (controls.js reads this state).
function setInfoState(state) {
  els.root.dataset.info = state;
  updateControls();
}

// The demo model says what it can answer: a hint and questions to click (other models send none).
function showGuide(served) {
  const guide = $('guide');
  guide.replaceChildren();
  guide.hidden = !served.hint;
  if (!served.hint) return;
  const hint = document.createElement('span');
  hint.textContent = served.hint;
  guide.append(hint);
  for (const question of served.suggested_questions || []) {
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
    const offered = el.dataset.requires.split(' ').some((skill) => info.capabilities.has(skill));
    el.hidden = !offered;
    any ||= offered;
  }
  els.skills.hidden = !any;
}
