// Shown instead of the app when the relay has a secret but no demo sign-on
// (GET /api/demo/config says `token`): rooms need tokens that an application mints, and this demo
// has no way to get one. Nothing is opened: no WebSocket, no listing.

import { h } from '../ui.js'

/**
 * @param {HTMLElement} root
 * @returns {() => void}
 */
export function mountTokensRequired (root) {
  document.title = 'Tokens required · Relay'
  root.append(h('section', { class: 'card notice-page', id: 'tokens-required' },
    h('span', { class: 'notice-icon', 'aria-hidden': 'true' }, h('span', { class: 'lock' })),
    h('h1', { text: 'This relay needs a token' }),
    h('p', {}, 'The relay is protected by a secret: every document and chat room needs a token, ' +
      'and tokens come from the application that uses the relay (its backend mints them). ' +
      'This demo has no backend of its own, so it cannot sign you on here.'),
    h('p', {}, 'The demo sign-on is off. To try the demo on this relay, start it with ',
      h('code', { text: '--demo-sign-on' }), ':'),
    h('pre', { class: 'command' }, h('code', { text: 'relay serve --secret … --demo-sign-on' })),
    h('p', { class: 'muted' }, 'The demo sign-on gives anyone who can reach the relay access to its ' +
      'demo documents and chat rooms. Use it for demos only, never for real data.')))
  return () => {}
}
