// Watch mode: "tell me when ..." conditions checked again and again by the server's model.
// A watch on this tab's camera checks the frames this page sends: one frame in flight, the
// next only after the server's watch_frame_done (live mode's backpressure). A watch on a
// server-side camera (--source) checks that camera's frames on the server. Wire protocol:
// docs/PROTOCOL.md, "Watch mode".

import { serverPath } from './page/paths.js';

const page = window.vlmPage;
const $ = (id) => document.getElementById(id);
const FRAME_RETRY_MS = 500;
const ERROR_BACKOFF_MS = 1500;
const LOADING_RETRY_MS = 2000; // the server's cameras start with its model: ask again while it loads (503)
const ALERT_LOG_LIMIT = 100; // as many as the server's own alert feed keeps; the oldest go first
const VERDICTS_KEPT = 200;
// A restarted server refuses watches while its model loads, or while this tab sends faster than its rate: ask again.
// (``busy`` is not among them: the server says it for its caps on watches, which waiting does not lift.)
const RETRY_CODES = new Set(['loading', 'rate_limited']);

const els = {
  form: $('watch-form'),
  condition: $('watch-condition'),
  source: $('watch-source'),
  preview: $('watch-preview'),
  list: $('watch-list'),
  watchTemplate: $('watch-template'),
  banner: $('alert-banner'),
  bannerText: $('alert-banner-text'),
  log: $('alert-log'),
  alertTemplate: $('alert-template'),
};

const watches = new Map(); // id -> {data, item, stale}: stale while a reconnected server has not taken it back
let restarts = 0;
const tab = { inFlight: null, lastDone: 0, timer: 0, nextAt: 0 };
let audio = null;

// Counters for tests (and the curious: window.__vlmWatchStats in the console).
const stats = { framesSent: 0, inFlight: 0, maxInFlight: 0, verdicts: [], alerts: 0, beeps: 0, notifications: 0 };
window.__vlmWatchStats = stats;

// ---------------------------------------------------------------- sources

async function loadSources() {
  const headers = page.token ? { Authorization: `Bearer ${page.token}` } : {};
  try {
    const response = await fetch(serverPath('/v1/watch'), { headers, cache: 'no-store' });
    if (response.status === 503) {
      setTimeout(loadSources, LOADING_RETRY_MS);
      return;
    }
    if (!response.ok) return;
    const { sources } = await response.json();
    for (const source of sources) els.source.append(new Option(`Server: ${source.label} (${source.id})`, source.id));
  } catch {
    // Without the list only this tab's camera is offered, which is what a plain set-up has anyway.
  }
}

function showPreview() {
  const id = els.source.value;
  els.preview.hidden = id === 'tab';
  els.preview.src = id === 'tab' ? '' : serverPath(`/v1/watch/sources/${encodeURIComponent(id)}/mjpeg`);
}

// ---------------------------------------------------------------- watches

function addWatch(condition, source) {
  askForNotifications();
  page.socket.emit('watch_add', { condition, source }, (ack) => {
    if (ack.error) {
      page.showError(`Could not start the watch: ${ack.error.message || ack.error}`);
      return;
    }
    render(ack.watch);
    scheduleFrame();
  });
}

// A new watch's item goes last in the list, or where ``before`` (its earlier self) was.
function render(data, before = null) {
  let entry = watches.get(data.id);
  if (!entry) {
    const item = els.watchTemplate.content.firstElementChild.cloneNode(true);
    item.dataset.id = data.id;
    item.querySelector('.watch-pause').addEventListener('click', () => pause(data.id));
    item.querySelector('.watch-remove').addEventListener('click', () => remove(data.id));
    if (before?.isConnected) before.before(item);
    else els.list.append(item);
    entry = { data, item };
    watches.set(data.id, entry);
  }
  entry.data = { ...entry.data, ...data };
  const { item } = entry;
  const watch = entry.data;
  item.dataset.verdict = watch.verdict || 'pending';
  item.dataset.on = String(Boolean(watch.on));
  item.dataset.paused = String(watch.paused);
  item.querySelector('.watch-condition').textContent = watch.condition;
  item.querySelector('.watch-source').textContent = watch.source === 'tab' ? 'this camera' : watch.source;
  // A server camera that is not playing: the last verdict is no longer news, and no check is coming.
  const down = watch.source !== 'tab' && ['reconnecting', 'ended', 'failed'].includes(watch.source_state);
  item.dataset.sourceState = watch.source_state || '';
  item.querySelector('.watch-verdict').textContent = watch.paused ? 'paused'
    : down ? `camera ${watch.source_state}` : (watch.verdict || 'checking…');
  // Why the camera is down (the server says it in a sentence) in place of the last answer, which is old news.
  item.querySelector('.watch-answer').textContent = (down && watch.source_problem) || watch.error || watch.answer || '';
  item.querySelector('.watch-checked').textContent = watch.checked
    ? `checked ${clock(watch.checked)} · ${watch.checks} checks` : '';
  // Every watch has these two buttons: their names say which watch, for a screen reader's list of buttons. Pause
  // says its state by its name (Pause, Resume), which is why it is not also a pressed toggle.
  const pauseButton = item.querySelector('.watch-pause');
  pauseButton.textContent = watch.paused ? 'Resume' : 'Pause';
  pauseButton.setAttribute('aria-label', `${pauseButton.textContent} watch: ${watch.condition}`);
  item.querySelector('.watch-remove').setAttribute('aria-label', `Remove watch: ${watch.condition}`);
}

function pause(id) {
  const entry = watches.get(id);
  if (entry.stale) { // the server takes it back paused or not, as asked now
    render({ id, paused: !entry.data.paused });
    return;
  }
  page.socket.emit('watch_pause', { id, paused: !entry.data.paused }, (ack) => {
    if (ack.error) return page.showError(ack.error.message || ack.error);
    render(ack.watch);
    scheduleFrame();
  });
}

function remove(id) {
  const entry = watches.get(id);
  if (entry?.stale) { // the server no longer has it: nothing to tell it
    keepFocusFrom(entry.item);
    entry.item.remove();
    watches.delete(id);
    return;
  }
  page.socket.emit('watch_remove', { id }, () => {
    const item = watches.get(id)?.item;
    if (item) keepFocusFrom(item);
    item?.remove();
    watches.delete(id);
    scheduleFrame();
  });
}

// Focus inside a watch being removed would drop to <body>: it goes to the next watch's Remove (or the one
// before), or with the last one gone to the condition field, where a keyboard user goes on from (a pointer's
// focus is not moved into a text field, which would open a phone's keyboard).
function keepFocusFrom(item) {
  const focused = document.activeElement;
  if (!item.contains(focused)) return;
  const neighbour = (item.nextElementSibling || item.previousElementSibling)?.querySelector('.watch-remove');
  if (neighbour) neighbour.focus();
  else if (focused.matches(':focus-visible')) els.condition.focus();
}

// The server forgets a tab's watches when its connection ends; a reconnect starts them again. Each stays listed,
// marked as waiting, until the server takes it back under a new id (a restarted server only once its model has
// loaded), paused again if it was paused; removing it meanwhile gives it up.
function restartAll() {
  restarts += 1;
  tab.inFlight = null;
  for (const entry of watches.values()) {
    entry.stale = true;
    entry.item.querySelector('.watch-verdict').textContent = 'waiting for the server…';
    entry.item.dataset.verdict = 'pending';
    restart(entry, restarts);
  }
}

function restart(entry, generation) {
  const { id, condition, source } = entry.data;
  const current = () => generation === restarts && watches.get(id) === entry; // not reconnected again, nor removed
  if (!current()) return;
  page.socket.emit('watch_add', { condition, source }, (ack) => {
    if (!current()) return;
    if (ack.error && RETRY_CODES.has(ack.error.code)) {
      setTimeout(() => restart(entry, generation), LOADING_RETRY_MS);
      return;
    }
    if (ack.error) {
      page.showError(`Could not restart the watch "${condition}": ${ack.error.message || ack.error}`);
      entry.item.querySelector('.watch-verdict').textContent = 'stopped';
      entry.item.querySelector('.watch-answer').textContent = ack.error.message || ack.error;
      return;
    }
    watches.delete(id);
    render({ ...ack.watch, paused: entry.data.paused }, entry.item); // no frame is sent for it before it is paused
    entry.item.remove();
    if (entry.data.paused) {
      page.socket.emit('watch_pause', { id: ack.watch.id, paused: true }, (reply) => {
        if (!reply.error && watches.has(ack.watch.id)) render(reply.watch);
      });
    }
    scheduleFrame();
  });
}

// ---------------------------------------------------------------- this tab's frames

function tabWatching() {
  return [...watches.values()].some(({ data, stale }) => data.source === 'tab' && !data.paused && !stale);
}

function scheduleFrame() {
  clearTimeout(tab.timer);
  if (tab.inFlight !== null || !tabWatching()) return;
  tab.timer = setTimeout(sendFrame, Math.max(0, tab.nextAt - performance.now()));
}

function sendFrame() {
  if (tab.inFlight !== null || !tabWatching()) return;
  const frame = page.socket.connected ? page.captureFrame(page.frameSize()) : null;
  if (!frame) {
    tab.timer = setTimeout(sendFrame, FRAME_RETRY_MS);
    return;
  }
  tab.inFlight = Infinity; // until the ack says which frame it is
  stats.framesSent += 1;
  stats.inFlight += 1;
  stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
  tab.nextAt = performance.now() + page.interval();
  page.socket.emit('watch_frame', { image: frame.dataUrl }, (ack) => {
    if (ack.error) {
      tab.nextAt = performance.now() + ERROR_BACKOFF_MS;
      frameDone();
    } else if (ack.checking === 0 || ack.frame <= tab.lastDone) {
      frameDone();
    } else {
      tab.inFlight = ack.frame;
    }
  });
}

function onFrameDone({ frame }) {
  tab.lastDone = Math.max(tab.lastDone, frame);
  if (tab.inFlight !== null && frame >= tab.inFlight) frameDone();
}

function frameDone() {
  tab.inFlight = null;
  stats.inFlight = Math.max(0, stats.inFlight - 1);
  scheduleFrame();
}

// ---------------------------------------------------------------- alerts

function onAlert(alert) {
  stats.alerts += 1;
  const when = clock(alert.time);
  els.bannerText.textContent = `${alert.condition} — ${alert.answer} (${when}, ${alert.source.label})`;
  els.banner.hidden = false;
  const item = els.alertTemplate.content.firstElementChild.cloneNode(true);
  item.querySelector('.thumb').src = alert.thumbnail;
  item.querySelector('.alert-condition').textContent = alert.condition;
  item.querySelector('.alert-answer').textContent = alert.answer;
  item.querySelector('.alert-time').textContent = `${when} · ${alert.source.label}`;
  els.log.prepend(item);
  while (els.log.childElementCount > ALERT_LOG_LIMIT) els.log.lastElementChild.remove();
  beep();
  notify(alert);
}

function askForNotifications() {
  if (window.Notification?.permission === 'default') Notification.requestPermission().catch(() => {});
  // The sound needs an AudioContext made during a click; browsers keep it silent otherwise.
  audio ||= window.AudioContext ? new AudioContext() : null;
}

function beep() {
  if (!audio) return;
  audio.resume().catch(() => {});
  const tone = audio.createOscillator();
  const gain = audio.createGain();
  tone.frequency.value = 880;
  gain.gain.setValueAtTime(0.2, audio.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
  tone.connect(gain).connect(audio.destination);
  tone.start();
  tone.stop(audio.currentTime + 0.4);
  stats.beeps += 1;
}

function notify(alert) {
  if (window.Notification?.permission !== 'granted') return;
  try {
    new Notification('Watch alert', { body: `${alert.condition} — ${alert.answer}`, tag: alert.watch });
    stats.notifications += 1;
  } catch {
    // Some mobile browsers only notify through a service worker; the banner and the sound remain.
  }
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

// ---------------------------------------------------------------- wiring

function main() {
  els.form.addEventListener('submit', (event) => {
    event.preventDefault();
    const condition = els.condition.value.trim();
    if (!condition) {
      els.condition.focus();
      return;
    }
    addWatch(condition, els.source.value);
    els.condition.value = '';
  });
  els.source.addEventListener('change', showPreview);
  $('alert-banner-close').addEventListener('click', () => { els.banner.hidden = true; });
  // Esc dismisses the banner too (on a phone it covers the top bar), unless it just stopped an answer (app.js).
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape' || event.defaultPrevented || els.banner.hidden) return;
    event.preventDefault();
    els.banner.hidden = true;
  });
  $('alert-log-clear').addEventListener('click', () => els.log.replaceChildren());
  page.socket.on('watch_state', (watch) => {
    // A check that was under way when its watch was removed may report after the removal: not a watch again.
    if (!watches.has(watch.id)) return;
    stats.verdicts.push(watch.verdict);
    if (stats.verdicts.length > VERDICTS_KEPT) stats.verdicts.splice(0, stats.verdicts.length - VERDICTS_KEPT);
    render(watch);
  });
  page.socket.on('watch_alert', onAlert);
  page.socket.on('watch_frame_done', onFrameDone);
  page.socket.on('connect', () => { if (watches.size) restartAll(); });
  page.socket.on('disconnect', () => { tab.inFlight = null; });
  loadSources();
}

main();
