// How a request is shown: the history list (newest first, with copy buttons), the current answer, the live panel.

import { els } from './dom.js';
import { liveAnswerCount } from './live.js';
import { announce } from './messages.js';
import { cancel, currentRequest } from './requests.js';

const HISTORY_LIMIT = 200; // a page left open all day keeps the newest; Copy all copies what is listed

const liveView = { box: els.livePanel, question: els.liveQuestion, answer: els.liveAnswer, meta: els.liveMeta };
const currentView = { box: els.current, question: els.currentQuestion, answer: els.answer, meta: els.answerMeta };

function answerText(request) {
  if (request.stopped && request.text.trim()) return request.text.trim(); // what had streamed when Stop was pressed
  // Superseded, or the connection lost, part-way: what had streamed is kept, with why it ends there.
  if (request.state === 'cancelled' || request.state === 'error') {
    return request.text.trim() ? `${request.text.trim()} … (${request.error})` : request.error;
  }
  if (request.state === 'done') return request.text || '(empty answer)';
  return request.text;
}

function renderInto(view, request) {
  view.box.dataset.state = request.state;
  view.question.textContent = request.label;
  view.answer.textContent = answerText(request);
  view.meta.textContent = request.meta;
  view.box.dataset.stopped = String(Boolean(request.stopped));
  view.meta.title = request.metaTitle;
  // Still being written: a screen reader that reads the card now is told so (the finished answer is announced).
  view.box.setAttribute('aria-busy', String(request.state === 'pending' || request.state === 'streaming'));
}

export function paint(request) {
  if (request.live) {
    paintLive(request);
    return;
  }
  renderInto(request.entry, request);
  request.entry.box.dataset.deltas = String(request.deltas);
  request.entry.box.dataset.deltasBeforeFinal = String(request.deltasBeforeFinal);
  if (request === latestAsked()) renderInto(currentView, request);
}

// The live panel keeps showing the previous answer until the next one starts arriving; one stopped part-way
// (Stop, or live switched off) keeps what had streamed, marked as stopped.
function paintLive(request) {
  const stoppedPartWay = request.stopped && request.text.trim();
  if (request.state === 'pending' || (request.state === 'cancelled' && !stoppedPartWay)) {
    liveView.box.dataset.state = request.state;
  } else {
    renderInto(liveView, request);
  }
  els.liveCount.textContent = String(liveAnswerCount());
}

function latestAsked() {
  const first = els.history.firstElementChild;
  return first ? first.request : null;
}

export function addHistoryEntry(request, thumb) {
  const item = els.entryTemplate.content.firstElementChild.cloneNode(true);
  item.dataset.id = request.id;
  item.request = request;
  item.querySelector('.thumb').src = thumb;
  const copy = item.querySelector('.copy');
  // Every entry has a Copy button: its name says whose answer, for a screen reader's list of buttons.
  copy.setAttribute('aria-label', `Copy answer to: ${request.label}`);
  copy.addEventListener('click', (event) => copyText(entryText(request), event.currentTarget));
  els.history.prepend(item);
  while (els.history.childElementCount > HISTORY_LIMIT) els.history.lastElementChild.remove();
  return {
    box: item,
    question: item.querySelector('.question'),
    answer: item.querySelector('.answer'),
    meta: item.querySelector('.meta'),
  };
}

function entryText(request) {
  const lines = [`Q: ${request.label}`, `A: ${answerText(request)}`];
  if (request.meta) lines.push(`(${request.meta})`);
  return lines.join('\n');
}

export function allEntriesText() {
  return [...els.history.children].reverse().map((item) => entryText(item.request)).join('\n\n');
}

export function clearHistory() {
  if (currentRequest() && !currentRequest().live) cancel();
  els.history.replaceChildren();
  renderInto(currentView, { state: 'idle', label: '', error: '', text: '', meta: '', metaTitle: '' });
}

export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    copyWithSelection(text);
  }
  flash(button, 'Copied');
  announce('Copied'); // the button's new text is not heard where the button has a name of its own
}

// For browsers without the async clipboard (e.g. plain http on a LAN address).
function copyWithSelection(text) {
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.className = 'offscreen';
  document.body.append(area);
  area.select();
  document.execCommand('copy');
  area.remove();
}

function flash(button, text) {
  const original = button.dataset.label || button.textContent;
  button.dataset.label = original;
  button.textContent = text;
  clearTimeout(button.flashTimer);
  button.flashTimer = setTimeout(() => { button.textContent = original; }, 1200);
}
