// Builds the demo apps into dist/ (or the directory given as the first argument).
//
//   node scripts/build.mjs            # writes examples/dist/
//   node scripts/build.mjs /tmp/out   # writes /tmp/out/ (what check-dist.mjs does)
//
// The output is reproducible: the same sources and node_modules give byte-identical files. There
// are no timestamps, no absolute paths (esbuild runs with examples/ as its working directory) and
// no source maps. The service worker's cache name is a hash of the other files, so a new build
// installs a new worker and replaces the cached app shell.
//
// yjs, y-protocols and lib0 are always taken from examples/node_modules, also when imported from
// @relay/client (a link to ../client-js, which has its own node_modules): two copies of Yjs in one
// page break `instanceof` checks and make Yjs warn "Yjs was already imported". The build fails if
// the bundle holds Yjs more than once.

import * as esbuild from 'esbuild'
import { createHash } from 'node:crypto'
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')

/** Packages that must exist once in the bundle, whoever imports them. */
const SINGLETONS = /^(yjs|y-protocols|lib0)(\/.*)?$/

/** Resolves the singleton packages as if examples/src had imported them. */
const singletons = {
  name: 'singletons',
  setup (build) {
    build.onResolve({ filter: SINGLETONS }, async (args) => {
      if (args.pluginData?.singleton) return undefined
      const result = await build.resolve(args.path, {
        kind: args.kind,
        resolveDir: join(root, 'src'),
        pluginData: { singleton: true }
      })
      if (result.errors.length > 0) return { errors: result.errors }
      return { path: result.path, sideEffects: result.sideEffects }
    })
  }
}

const common = {
  absWorkingDir: root,
  bundle: true,
  minify: true,
  legalComments: 'none',
  target: ['es2020', 'chrome90', 'firefox90', 'safari15'],
  logLevel: 'warning',
  write: false,
  metafile: true,
  charset: 'utf8'
}

/**
 * Builds everything into memory.
 * @returns {Promise<Map<string, Uint8Array>>} file name → content
 */
export async function build () {
  const files = new Map()
  const app = await esbuild.build({
    ...common,
    // The Tiptap demo is a page of its own (tiptap.html), on @hocuspocus/provider.
    entryPoints: { app: 'src/app.js', tiptap: 'src/tiptap.js' },
    outdir: 'out',
    format: 'esm',
    platform: 'browser',
    plugins: [singletons],
    loader: { '.svg': 'text' }
  })
  checkSingleYjs(app.metafile)
  const css = await esbuild.build({
    ...common,
    entryPoints: { app: 'src/app.css' },
    outdir: 'out'
  })
  for (const out of [...app.outputFiles, ...css.outputFiles]) {
    files.set(out.path.slice(join(root, 'out').length + 1), out.contents)
  }
  const staticDir = join(root, 'src', 'static')
  for (const name of (await readdir(staticDir)).sort()) {
    files.set(name, await readFile(join(staticDir, name)))
  }
  // The worker caches the shell; its cache name changes with every file it caches.
  const hash = createHash('sha256')
  for (const name of [...files.keys()].sort()) {
    hash.update(name).update('\0').update(files.get(name)).update('\0')
  }
  const sw = await esbuild.build({
    ...common,
    entryPoints: { sw: 'src/sw.js' },
    outdir: 'out',
    format: 'iife',
    platform: 'browser',
    define: {
      BUILD_ID: JSON.stringify(hash.digest('hex').slice(0, 16)),
      SHELL_FILES: JSON.stringify(['/', ...[...files.keys()].sort().map(name => '/' + name)])
    }
  })
  for (const out of sw.outputFiles) {
    files.set(out.path.slice(join(root, 'out').length + 1), out.contents)
  }
  return new Map([...files].sort(([a], [b]) => a < b ? -1 : 1))
}

/** Fails when Yjs (or y-protocols, lib0) got into the bundle from two places. */
function checkSingleYjs (metafile) {
  const copies = new Map()
  for (const input of Object.keys(metafile.inputs)) {
    const m = /(?:^|\/)node_modules\/(yjs|y-protocols|lib0)\//.exec(input)
    if (!m) continue
    const base = input.slice(0, m.index + m[0].length)
    if (!copies.has(m[1])) copies.set(m[1], new Set())
    copies.get(m[1]).add(base)
  }
  for (const [name, bases] of copies) {
    if (bases.size > 1) {
      throw new Error(`the bundle holds ${bases.size} copies of ${name}: ${[...bases].join(', ')}`)
    }
  }
  const yjsFiles = Object.keys(metafile.inputs).filter(p => /node_modules\/yjs\/dist\/yjs\.mjs$/.test(p))
  if (yjsFiles.length !== 1) {
    throw new Error(`expected Yjs once in the bundle, found ${yjsFiles.length}: ${yjsFiles.join(', ')}`)
  }
}

/** Writes the files into dir, removing whatever else was there. */
export async function writeOut (files, dir) {
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  for (const [name, contents] of files) {
    await mkdir(dirname(join(dir, name)), { recursive: true })
    await writeFile(join(dir, name), contents)
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dir = resolve(process.argv[2] ?? join(root, 'dist'))
  const files = await build()
  await writeOut(files, dir)
  for (const [name, contents] of files) {
    console.log(`${name.padEnd(12)} ${String(contents.byteLength).padStart(8)} bytes`)
  }
}
