// HTTP requests to the relay for the JS test suites: every request has a deadline, and a
// request that does not get the status it expects fails with the body the relay sent. Plain ESM,
// Node's built-ins only (the global `fetch`).

/** How long one request may take before it is aborted. */
const REQUEST_DEADLINE_MS = 10_000

/** `url` as it may appear in a failure message: a `token` parameter is hidden. */
function shown (url) {
  return String(url).replace(/([?&]token=)[^&]+/, '$1…')
}

/**
 * `fetch` with a deadline ({@link REQUEST_DEADLINE_MS} unless `init.signal` says otherwise).
 * @param {string | URL} url
 * @param {RequestInit} [init]
 * @returns {Promise<Response>}
 */
export function request (url, init = {}) {
  return fetch(url, { signal: AbortSignal.timeout(REQUEST_DEADLINE_MS), ...init })
}

/**
 * Sends a request and returns its response, or fails with the status and body unless the status
 * is `status`.
 * @param {string | URL} url
 * @param {RequestInit & { status?: number }} [init] `status`: the expected one (default 200)
 * @returns {Promise<Response>}
 */
export async function requestOk (url, { status = 200, ...init } = {}) {
  const response = await request(url, init)
  if (response.status !== status) {
    throw new Error(`${init.method ?? 'GET'} ${shown(url)}: HTTP ${response.status} (expected ${status}): ${await response.text()}`)
  }
  return response
}

/**
 * GET `url` and parse its JSON body; fails unless the status is 200.
 * @param {string | URL} url
 * @returns {Promise<any>}
 */
export async function getJson (url) {
  return (await requestOk(url)).json()
}
