// Compares the client's two transports, WebSocket and HTTP long-polling, against the real relay on
// one machine in one run: edit-to-delivery latency and the relay's CPU time per delivered update.
//
//   RELAY_BIN=../target/release/relay node scripts/bench-transports.mjs [options]
//   npm run bench:transports -- [options]
//
// Options:
//   --edits N          edits per measured point (default 400)
//   --rate R           edits per second, all clients together (default 20)
//   --sizes A,B        clients per room (default 2,50)
//   --transports T,U   transports to compare (default websocket,polling)
//   --warmup N         edits of an unreported 2-client warm-up per transport (default 40; 0: none)
//   --drain-ms MS      how long to wait for missing deliveries after the last edit (default 10000)
//   --json FILE        also write the raw results (every latency sample included) as JSON
//   --no-pin           do not pin the relay to core 0 and this process to core 1
//
// The script starts the relay itself (`$RELAY_BIN`, default ../target/release/relay relative to
// client-js) on 127.0.0.1 with a temporary data directory, pinned with `taskset -c 0`, and pins
// this Node process (all its threads) to core 1, so that clients and relay do not share a core.
//
// For each transport and room size: a fresh room, N RelayProviders of that transport (no IndexedDB,
// no cross-tab sync: they share one process, a BroadcastChannel would bypass the relay), all
// synced; then the clients take turns inserting `#ID;` at the end of a Y.Text, at a steady total
// rate. Every receiver notes `performance.now()` when an edit's text shows up in its document
// (a remote Y.Text change); the latency is that minus the sender's `performance.now()` just before
// its insert (same process, same clock). Each edit should reach the N-1 other clients.
//
// Relay CPU: utime+stime of the relay process (/proc/PID/stat, all threads, in clock ticks of
// `getconf CLK_TCK`) read when the first edit is made and again when the last delivery arrived (or
// the drain deadline passed), divided by the deliveries, and by the edits (with 2 clients each edit
// is one delivery, so the per-edit work, applying, storing and acknowledging it, dominates). The
// same from the per-thread schedstat (nanoseconds) goes to the JSON as a finer cross-check (the
// tick is 10 ms at CLK_TCK=100: use enough edits). The window includes everything the
// clients cause meanwhile: save requests and their commits, awareness renewals (y-protocols renews
// each client's state every 15 s), the relay's keep-alives.
//
// Nothing leaves loopback. Providers, the relay and its data directory are cleaned up on errors and
// on Ctrl-C too. Exit code 1 when a delivery is missing.

import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import os from 'node:os'
import { dirname, relative, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import * as Y from 'yjs'
import { WebSocket } from 'ws'
import { RelayProvider } from '../src/index.js'
import { startRelay as startTestRelay } from '../../tests/js-support/relay.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const clientDir = resolve(here, '..')

const usage = readFileSync(fileURLToPath(import.meta.url), 'utf8')
  .split('\n').filter(l => l.startsWith('//')).slice(0, 15).map(l => l.slice(3)).join('\n')

const { values: opts } = parseArgs({
  options: {
    edits: { type: 'string', default: '400' },
    rate: { type: 'string', default: '20' },
    sizes: { type: 'string', default: '2,50' },
    transports: { type: 'string', default: 'websocket,polling' },
    warmup: { type: 'string', default: '40' },
    'drain-ms': { type: 'string', default: '10000' },
    json: { type: 'string' },
    'no-pin': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (opts.help) {
  console.log(usage)
  process.exit(0)
}

/** @param {string} name @param {string} v @param {number} min */
function int (name, v, min) {
  const n = Number(v)
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min} (got ${v})`)
  return n
}

const EDITS = int('edits', opts.edits, 1)
const RATE = Number(opts.rate)
if (!(RATE > 0 && RATE <= 10_000)) throw new Error(`--rate must be a number in (0, 10000] (got ${opts.rate})`)
const SIZES = opts.sizes.split(',').map(s => int('sizes', s.trim(), 2))
const TRANSPORTS = opts.transports.split(',').map(s => s.trim())
for (const t of TRANSPORTS) {
  if (t !== 'websocket' && t !== 'polling') throw new Error(`--transports: websocket or polling (got ${t})`)
}
const WARMUP = int('warmup', opts.warmup, 0)
const DRAIN_MS = int('drain-ms', opts['drain-ms'], 0)
const RELAY_BIN = process.env.RELAY_BIN
  ? resolve(process.env.RELAY_BIN)
  : resolve(clientDir, '../target/release/relay')
const SYNC_DEADLINE_MS = 60_000
const SETTLE_MS = 1000

const sleep = (/** @type {number} */ ms) => new Promise(resolve => setTimeout(resolve, ms))

// --- the machine -----------------------------------------------------------------------------

function sh (/** @type {string} */ cmd, /** @type {string[]} */ args) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim()
}

const NPROC = (() => { try { return Number(sh('nproc', [])) } catch { return os.cpus().length } })()
const CLK_TCK = Number(sh('getconf', ['CLK_TCK']))
const CPU_MODEL = (() => {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))
    return m ? m[1].trim() : os.cpus()[0]?.model ?? 'unknown'
  } catch { return os.cpus()[0]?.model ?? 'unknown' }
})()

/** utime+stime of a process in microseconds (clock-tick resolution), all threads, dead ones too. */
function procCpuUs (/** @type {number} */ pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(f[14 - 3]) + Number(f[15 - 3])
  return ticks * 1e6 / CLK_TCK
}

/** On-CPU time of the live threads of a process, from schedstat (nanoseconds), in microseconds. */
function schedCpuUs (/** @type {number} */ pid) {
  let ns = 0
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try { ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]) } catch {}
  }
  return ns / 1000
}

/** VmRSS and VmHWM of a process, in KiB. */
function procMemKiB (/** @type {number} */ pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kib = (/** @type {string} */ key) => Number(new RegExp(`^${key}:\\s*(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN)
  return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') }
}

// --- clean-up --------------------------------------------------------------------------------

/** @type {Array<() => void | Promise<void>>} run in reverse order */
const cleanups = []
let cleaning = null
function cleanup () {
  cleaning ??= (async () => {
    while (cleanups.length > 0) {
      try { await cleanups.pop()?.() } catch (err) { console.error('clean-up:', err) }
    }
  })()
  return cleaning
}
for (const sig of /** @type {const} */ (['SIGINT', 'SIGTERM'])) {
  process.once(sig, () => {
    console.error(`\n${sig}: cleaning up`)
    cleanup().finally(() => process.exit(130))
  })
}

// --- the relay -------------------------------------------------------------------------------

/**
 * Starts `relay serve` on 127.0.0.1 (a free port) with a temporary data directory, through the
 * test suites' fixture.
 * @param {boolean} pin
 */
async function startRelay (pin) {
  const relay = await startTestRelay({ bin: RELAY_BIN, launcher: pin ? ['taskset', '-c', '0'] : [] })
  cleanups.push(async () => {
    await relay.stop().catch(err => console.error('stopping the relay:', err.message))
    await relay.dispose()
  })
  const pid = /** @type {number} */ (relay.pid)
  // taskset execs the relay, so the pid is the relay's; make sure we measure the right process.
  const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
  if (comm !== 'relay') throw new Error(`pid ${pid} is "${comm}", not the relay`)
  return { url: relay.url, pid }
}

// --- one point -------------------------------------------------------------------------------

/**
 * @param {ArrayLike<number>} xs sorted
 * @param {number} q in [0, 1]
 */
function quantile (xs, q) {
  if (xs.length === 0) return NaN
  return xs[Math.min(xs.length - 1, Math.max(0, Math.ceil(q * xs.length) - 1))]
}

/**
 * Runs one transport with `n` clients in a fresh room.
 * @param {{url: string, pid: number}} relay
 * @param {'websocket' | 'polling'} transport
 * @param {number} n clients
 * @param {number} edits
 */
async function point (relay, transport, n, edits) {
  const room = `bench/${transport}/${n}/${Date.now()}-${Math.random().toString(36).slice(2, 8)}`
  /** @type {Array<{p: RelayProvider, doc: Y.Doc}>} */
  const clients = []
  const destroyAll = () => {
    for (const { p, doc } of clients.splice(0)) {
      try { p.destroy() } catch {}
      try { doc.destroy() } catch {}
    }
  }
  cleanups.push(destroyAll)
  try {
    for (let i = 0; i < n; i++) {
      const doc = new Y.Doc()
      const p = new RelayProvider(relay.url, room, doc, {
        transport,
        WebSocketPolyfill: /** @type {any} */ (WebSocket),
        offline: false,
        crossTab: false
      })
      clients.push({ p, doc })
    }
    const syncStart = performance.now()
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let syncTimer
    await Promise.race([
      Promise.all(clients.map(c => c.p.whenSynced)),
      new Promise((resolve, reject) => {
        syncTimer = setTimeout(() => reject(new Error(`${n} ${transport} clients did not sync within ${SYNC_DEADLINE_MS} ms`)), SYNC_DEADLINE_MS)
      })
    ]).finally(() => clearTimeout(syncTimer))
    const syncMs = performance.now() - syncStart
    for (const { p } of clients) {
      if (p.transport !== transport) throw new Error(`a client is on ${p.transport}, not ${transport}`)
    }

    const sentAt = new Float64Array(edits).fill(NaN)
    const from = new Int32Array(edits).fill(-1)
    const seen = new Uint8Array(edits * n)
    /** @type {number[]} */
    const latencies = []
    let duplicates = 0
    let unknown = 0
    let lastDeliveryAt = 0
    const expected = edits * (n - 1)
    /** @type {() => void} */
    let allArrived = () => {}
    const arrived = new Promise(resolve => { allArrived = () => resolve(undefined) })
    clients.forEach(({ doc }, r) => {
      doc.getText('t').observe((event, tr) => {
        if (tr.local) return
        const now = performance.now()
        for (const d of event.delta) {
          if (typeof d.insert !== 'string') continue
          for (const m of d.insert.matchAll(/#(\d+);/g)) {
            const id = Number(m[1])
            if (!(id < edits) || from[id] < 0 || from[id] === r) { unknown++; continue }
            if (seen[id * n + r]) { duplicates++; continue }
            seen[id * n + r] = 1
            latencies.push(now - sentAt[id])
            lastDeliveryAt = now
            if (latencies.length === expected) allArrived()
          }
        }
      })
    })

    // Let the joining traffic (sync, awareness, save acknowledgements) die down.
    await sleep(SETTLE_MS)

    const interval = 1000 / RATE
    const cpu0 = procCpuUs(relay.pid)
    const sched0 = schedCpuUs(relay.pid)
    const node0 = process.cpuUsage()
    const t0 = performance.now()
    for (let i = 0; i < edits; i++) {
      const wait = t0 + i * interval - performance.now()
      if (wait > 1) await sleep(wait)
      const s = i % n
      const text = clients[s].doc.getText('t')
      from[i] = s
      sentAt[i] = performance.now()
      text.insert(text.length, `#${i};`)
    }
    const lastEditAt = performance.now()
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let drainTimer
    await Promise.race([arrived, new Promise(resolve => { drainTimer = setTimeout(resolve, DRAIN_MS) })])
    clearTimeout(drainTimer)
    const t1 = performance.now()
    const cpu1 = procCpuUs(relay.pid)
    const sched1 = schedCpuUs(relay.pid)
    const node1 = process.cpuUsage(node0)
    const mem = procMemKiB(relay.pid)

    const sorted = Float64Array.from(latencies).sort()
    const got = latencies.length
    const relayCpuUs = cpu1 - cpu0
    const result = {
      transport,
      clients: n,
      edits,
      rate: RATE,
      expected,
      got,
      missing: expected - got,
      duplicates,
      unknown,
      syncMs: +syncMs.toFixed(1),
      windowMs: +(t1 - t0).toFixed(1),
      editingMs: +(lastEditAt - t0).toFixed(1),
      lastDeliveryAfterLastEditMs: got > 0 ? +(lastDeliveryAt - lastEditAt).toFixed(1) : null,
      latencyMs: {
        median: +quantile(sorted, 0.5).toFixed(2),
        p90: +quantile(sorted, 0.9).toFixed(2),
        p99: +quantile(sorted, 0.99).toFixed(2),
        max: +quantile(sorted, 1).toFixed(2),
        mean: +(latencies.reduce((a, b) => a + b, 0) / Math.max(1, got)).toFixed(2)
      },
      relay: {
        cpuUs: relayCpuUs,
        cpuTickUs: 1e6 / CLK_TCK,
        cpuUsPerDelivery: got > 0 ? +(relayCpuUs / got).toFixed(2) : null,
        cpuMsPer1000Deliveries: got > 0 ? +(relayCpuUs / got).toFixed(2) : null,
        cpuUsPerEdit: +(relayCpuUs / edits).toFixed(1),
        schedCpuUs: +(sched1 - sched0).toFixed(0),
        schedCpuUsPerDelivery: got > 0 ? +((sched1 - sched0) / got).toFixed(2) : null,
        cpuPercentOfWindow: +(100 * relayCpuUs / 1000 / (t1 - t0)).toFixed(1),
        ...mem
      },
      node: {
        cpuUs: node1.user + node1.system,
        cpuPercentOfWindow: +(100 * (node1.user + node1.system) / 1000 / (t1 - t0)).toFixed(1)
      },
      latencySamplesMs: Array.from(latencies, x => +x.toFixed(3))
    }
    return result
  } finally {
    destroyAll()
    // Let the relay see the sessions end (polling's DELETE is fire and forget) before the next point.
    await sleep(500)
  }
}

// --- main ------------------------------------------------------------------------------------

function pinSelf () {
  // -a: every thread of this process (libuv's pool and V8's threads exist already).
  sh('taskset', ['-a', '-cp', '1', String(process.pid)])
}

function fmt (/** @type {number | null} */ x, digits = 1) {
  return x === null || Number.isNaN(x) ? '–' : x.toFixed(digits)
}

async function main () {
  let pin = !opts['no-pin']
  if (pin && NPROC < 2) {
    console.error(`only ${NPROC} CPU(s): not pinning`)
    pin = false
  }
  if (pin) pinSelf()
  const relay = await startRelay(pin)
  let relayVersion = ''
  try { relayVersion = sh(RELAY_BIN, ['--version']) } catch {}
  const loadBefore = os.loadavg()
  const command = [
    process.env.RELAY_BIN ? `RELAY_BIN=${process.env.RELAY_BIN}` : '',
    'node', relative(process.cwd(), fileURLToPath(import.meta.url)) || 'scripts/bench-transports.mjs',
    ...process.argv.slice(2)
  ].filter(Boolean).join(' ')
  console.error(`relay ${relayVersion || RELAY_BIN} (pid ${relay.pid}) on ${relay.url}${pin ? ', pinned to core 0, node to core 1' : ', not pinned'}`)

  if (WARMUP > 0) {
    for (const transport of TRANSPORTS) {
      console.error(`warm-up: ${transport}, 2 clients, ${WARMUP} edits`)
      await point(relay, /** @type {any} */ (transport), 2, WARMUP)
    }
  }

  const results = []
  for (const transport of TRANSPORTS) {
    for (const n of SIZES) {
      console.error(`${transport}, ${n} clients, ${EDITS} edits at ${RATE}/s ...`)
      const r = await point(relay, /** @type {any} */ (transport), n, EDITS)
      console.error(`  ${r.got}/${r.expected} deliveries, median ${r.latencyMs.median} ms, p99 ${r.latencyMs.p99} ms, relay ${fmt(r.relay.cpuUsPerDelivery)} µs/delivery, node CPU ${r.node.cpuPercentOfWindow}%`)
      results.push(r)
    }
  }
  const loadAfter = os.loadavg()

  const machine = {
    nproc: NPROC,
    cpuModel: CPU_MODEL,
    node: process.version,
    kernel: os.release(),
    clkTck: CLK_TCK,
    pinned: pin,
    loadavgBefore: loadBefore,
    loadavgAfter: loadAfter,
    relayBin: RELAY_BIN,
    relayVersion
  }
  const lines = [
    `Machine: ${NPROC} CPUs, ${CPU_MODEL}; Node ${process.version}; Linux ${os.release()}; ` +
      `load average ${loadBefore.map(x => x.toFixed(2)).join(' ')} before, ${loadAfter.map(x => x.toFixed(2)).join(' ')} after`,
    `Relay: ${relayVersion || RELAY_BIN}${pin ? ', pinned to core 0; clients (this Node process) on core 1' : ', not pinned'}; ${RATE} edits/s in total`,
    `Command: \`${command}\``,
    '',
    '| transport | clients | edits | deliveries (got/expected) | median ms | p99 ms | relay CPU µs per delivery | relay CPU µs per edit | relay CPU ms | relay RSS MiB | node CPU % |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
  ]
  for (const r of results) {
    const missing = r.missing > 0 ? ` (${r.missing} missing)` : ''
    lines.push(`| ${r.transport} | ${r.clients} | ${r.edits} | ${r.got}/${r.expected}${missing} | ${fmt(r.latencyMs.median, 2)} | ${fmt(r.latencyMs.p99, 2)} | ` +
      `${fmt(r.relay.cpuUsPerDelivery)} | ${fmt(r.relay.cpuUsPerEdit, 0)} | ${fmt(r.relay.cpuUs / 1000, 0)} | ${fmt(r.relay.rssKiB / 1024, 1)} | ${fmt(r.node.cpuPercentOfWindow, 0)} |`)
  }
  lines.push('', 'Latency: from the sender\'s insert to the edit\'s arrival in each other client\'s document, over all (edit, receiver) pairs. ' +
    `Relay CPU: utime+stime from /proc (tick ${1e6 / CLK_TCK} µs) over the editing window, per delivery (µs per delivery = ms per 1,000 deliveries).`)
  const busy = results.filter(r => r.node.cpuPercentOfWindow > 70)
  if (busy.length > 0) {
    lines.push('', `Note: the clients' process was busy (${busy.map(r => `${r.transport}/${r.clients}: ${r.node.cpuPercentOfWindow}% of a core`).join(', ')}); ` +
      'those latencies include queueing inside the one Node process that runs every client.')
  }
  console.log(lines.join('\n'))

  if (opts.json) {
    await writeFile(opts.json, JSON.stringify({ machine, command, options: { edits: EDITS, rate: RATE, sizes: SIZES, transports: TRANSPORTS, warmup: WARMUP, drainMs: DRAIN_MS }, results }, null, 2) + '\n')
    console.error(`raw results in ${opts.json}`)
  }
  if (results.some(r => r.missing > 0 || r.duplicates > 0)) {
    console.error('some deliveries are missing or duplicated')
    process.exitCode = 1
  }
}

try {
  await main()
} catch (err) {
  console.error(err)
  process.exitCode = 1
} finally {
  await cleanup()
}
