// The service worker: keeps the app shell (index.html, app.js, app.css, icons) in a cache so that
// the app opens without a network; the documents themselves come from IndexedDB, through the
// client.
//
// Strategy: network first, cache as the fallback. Online you always get the newest build (the
// relay answers with ETags, so an unchanged file costs a 304); offline, or when the relay does
// not answer within NETWORK_TIMEOUT_MS, the cached copy. Pages of the app (/, /docs/..., /chat/...)
// are all index.html. The last document lists (GET /api/docs, GET /api/demo/docs) and how the app
// connects (GET /api/demo/config) are cached too, marked with the header `x-served-from: cache`
// when they come from there. Tokens (POST /api/demo/token) are never cached.
//
// BUILD_ID and SHELL_FILES are filled in by scripts/build.mjs: a new build gets a new cache and
// drops the old one.

/* global BUILD_ID, SHELL_FILES */

const SHELL_CACHE = `relay-shell-${BUILD_ID}`
const API_CACHE = 'relay-api'
const NETWORK_TIMEOUT_MS = 4000
const CONFIG_PATH = '/api/demo/config'
/** GET answers of the API kept for offline use (keyed by path and query). */
const API_LISTS = ['/api/docs', '/api/demo/docs', CONFIG_PATH]

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL_CACHE)
    await cache.addAll(SHELL_FILES)
    // The page that installs the worker asked for the mode before the worker could see it: keep
    // it now, so that the app opens offline in the right mode.
    try {
      const config = await withTimeout(fetch(CONFIG_PATH), NETWORK_TIMEOUT_MS)
      if (config.ok) await (await caches.open(API_CACHE)).put(CONFIG_PATH, config)
    } catch {}
    await self.skipWaiting()
  })())
})

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key.startsWith('relay-shell-') && key !== SHELL_CACHE) await caches.delete(key)
    }
    // Control the pages that are already open, so that they too reload offline.
    await self.clients.claim()
  })())
})

self.addEventListener('fetch', (event) => {
  const request = event.request
  if (request.method !== 'GET') return
  const url = new URL(request.url)
  if (url.origin !== self.location.origin) return
  if (request.mode === 'navigate' && isAppPage(url.pathname)) {
    event.respondWith(networkFirst(request, SHELL_CACHE, '/index.html'))
  } else if (SHELL_FILES.includes(url.pathname)) {
    event.respondWith(networkFirst(request, SHELL_CACHE, url.pathname))
  } else if (API_LISTS.includes(url.pathname)) {
    event.respondWith(networkFirst(request, API_CACHE, url.pathname + url.search))
  }
})

function isAppPage (path) {
  return path === '/' || /^\/(docs|chat)(\/|$)/.test(path)
}

/**
 * Asks the network (with a deadline); on failure answers from the cache. Good answers are
 * stored under `key`.
 */
async function networkFirst (request, cacheName, key) {
  const cache = await caches.open(cacheName)
  try {
    const response = await withTimeout(fetch(request), NETWORK_TIMEOUT_MS)
    if (response.ok) await cache.put(key, response.clone())
    return response
  } catch (err) {
    const cached = await cache.match(key)
    if (!cached) throw err
    const headers = new Headers(cached.headers)
    headers.set('x-served-from', 'cache')
    return new Response(cached.body, { status: cached.status, statusText: cached.statusText, headers })
  }
}

function withTimeout (promise, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('network timeout')), ms)
    promise.then(
      (value) => { clearTimeout(timer); resolve(value) },
      (err) => { clearTimeout(timer); reject(err) }
    )
  })
}
