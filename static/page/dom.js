// The page's elements, looked up once; every module reads them from here.

export const $ = (id) => document.getElementById(id);

export const els = {
  root: document.documentElement,
  status: $('status'),
  modelInfo: $('model-info'),
  announcer: $('announcer'),
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
  askBlocked: $('ask-blocked'),
  skills: $('skills'),
  skillObject: $('skill-object'),
  liveToggle: $('live-toggle'),
  liveInterval: $('live-interval'),
  liveSize: $('live-size'),
  livePanel: $('live-panel'),
  liveQuestion: $('live-question'),
  livePaused: $('live-paused'),
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

// Whether element has focus that the keyboard gave it (a pointer's focus is often best left alone: moving it to a
// text field opens a phone's keyboard).
export function keyboardFocused(element) {
  if (!(element instanceof HTMLElement) || document.activeElement !== element) return false;
  try {
    return element.matches(':focus-visible');
  } catch {
    return true; // a browser without :focus-visible
  }
}
