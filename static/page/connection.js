// The Socket.IO connection: its status in the top bar, and the server's events routed to the requests module.

import { updateControls } from './controls.js';
import { els } from './dom.js';
import { loadInfo } from './info.js';
import { serverPath } from './paths.js';
import { scheduleLive, showLiveRunning } from './live.js';
import { clearError, showError } from './messages.js';
import { dropInFlight, errorText, onQueryError, onQueued, onResponse, onStream } from './requests.js';

const STATUS_TEXT = { connected: 'Connected', disconnected: 'Disconnected', reconnecting: 'Reconnecting…' };
const LOST_CONNECTION = 'The connection to the server was lost (was it stopped or restarted?). '
  + 'Asking is paused until it is back; the page keeps trying to reconnect by itself.';
// Engine.IO's words when a page's origin is not the server's own. Behind a reverse proxy that does not pass on
// the scheme or host the browser used (Apache sends no X-Forwarded-Proto), every visit of the real page gets
// them, and the page would only ever say "Reconnecting…".
const ORIGIN_REFUSAL = 'Not an accepted origin';

let socket = null;
let connectedBefore = false;

export function connection() {
  return socket;
}

export function connected() {
  return Boolean(socket?.connected);
}

export function connect(token) {
  socket = window.io({ path: serverPath('/socket.io'), ...(token ? { auth: { token } } : {}) });
  socket.on('connect', () => {
    setStatus('connected');
    showTransport();
    socket.io.engine.once('upgrade', showTransport);
    // A reconnect may reach a server restarted with another model: its name, skills, guide and frame size
    // are asked for again (the first connect's are being loaded by the page's start).
    if (connectedBefore) loadInfo(token);
    connectedBefore = true;
  });
  socket.on('disconnect', () => {
    setStatus(socket.active ? 'reconnecting' : 'disconnected');
    dropInFlight('The connection to the server was lost.');
    if (socket.active) showError(LOST_CONNECTION, 'connection');
  });
  socket.on('connect_error', (err) => {
    setStatus(socket.active ? 'reconnecting' : 'disconnected');
    if (String(err.context?.responseText ?? '').includes(ORIGIN_REFUSAL)) {
      showError(`The server refused this page's address, ${window.location.origin}, as another site's. `
        + 'Behind a reverse proxy, the proxy must pass on the host and scheme the browser used '
        + '(Host and X-Forwarded-Proto; see DEPLOYMENT.md); the server\'s log names the address it expected.',
        'connection');
      return;
    }
    // A refusal by the server carries its reason in err.data ({code, message}); the page words it as it words
    // the same refusal of a question.
    const reason = err.data?.code ? errorText(err.data) : err.message;
    if (!socket.active) showError(`The server refused the connection: ${reason}`, 'connection');
  });
  socket.io.on('reconnect_attempt', () => setStatus('reconnecting'));
  socket.on('queued', onQueued);
  socket.on('stream', onStream);
  socket.on('response', onResponse);
  socket.on('query_error', onQueryError);
  return socket;
}

function setStatus(status) {
  els.status.dataset.state = status;
  els.status.textContent = STATUS_TEXT[status];
  if (status === 'connected') clearError('connection');
  updateControls();
  showLiveRunning();
  if (status === 'connected') scheduleLive();
}

// Kept for the curious and for tests, not in a title: a status region's title becomes its name, and a screen
// reader said "Socket.IO over websocket, Connected".
function showTransport() {
  els.status.dataset.transport = socket.io.engine?.transport?.name || '';
}
