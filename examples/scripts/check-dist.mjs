// Fails when the committed dist/ is not what the sources build to.
//
//   node scripts/check-dist.mjs     (npm run check-dist)
//
// It builds into a temporary directory, compares every file byte for byte with dist/ and lists
// what differs. The relay binary embeds dist/, so a stale dist/ would ship an old app.
// Fix a failure with `npm run build` and commit dist/.

import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build, writeOut } from './build.mjs'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const dist = join(root, 'dist')

async function list (dir) {
  const out = []
  async function walk (d) {
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const p = join(d, entry.name)
      if (entry.isDirectory()) await walk(p)
      else out.push(relative(dir, p))
    }
  }
  await walk(dir).catch(err => { if (err.code !== 'ENOENT') throw err })
  return out.sort()
}

const tmp = await mkdtemp(join(tmpdir(), 'examples-dist-'))
try {
  await writeOut(await build(), tmp)
  const built = await list(tmp)
  const committed = await list(dist)
  const problems = []
  for (const name of built) {
    if (!committed.includes(name)) {
      problems.push(`missing from dist/: ${name}`)
    } else if (!(await readFile(join(tmp, name))).equals(await readFile(join(dist, name)))) {
      problems.push(`differs: dist/${name}`)
    }
  }
  for (const name of committed) {
    if (!built.includes(name)) problems.push(`not built from the sources: dist/${name}`)
  }
  if (problems.length > 0) {
    console.error(`examples/dist is stale (run \`npm run build\` in examples/ and commit dist/):\n  ${problems.join('\n  ')}`)
    process.exitCode = 1
  } else {
    console.log(`examples/dist is up to date (${built.length} files)`)
  }
} finally {
  await rm(tmp, { recursive: true, force: true })
}
