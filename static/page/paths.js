// Where the server is mounted: '' at its host's root, '/vlm' when a reverse proxy serves it under /vlm
// (--root-path, or the proxy's X-Forwarded-Prefix); the server renders it into the page. Every URL the page
// asks for is made here.

const root = document.documentElement.dataset.root ?? '';

export function serverPath(path) {
  return `${root}${path}`;
}
