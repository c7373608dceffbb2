// The npm tarball, installed into a fresh folder under the original's name (as an npm
// alias or a file: dependency would), runs the original's examples unchanged from
// CommonJS and ESM and type-checks with tsc --strict, no skipLibCheck.
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import { url } from './helpers.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const fixtures = path.join(root, '__test__', 'package')

test('packed, installed as @discue/mongodb-resource-client: examples and typings work', async (t) => {
  t.timeout(300_000)
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mrl-pack-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', dir], { cwd: root, encoding: 'utf8' }))
  const files = packed[0].files.map((f) => f.path)
  t.true(files.some((f) => f.endsWith('.node')), 'the binary is in the tarball')
  for (const f of ['index.js', 'index.d.ts', 'binding.js', 'binding.d.ts', 'tracing.js', 'README.md']) t.true(files.includes(f), f)

  const app = path.join(dir, 'app')
  execFileSync('mkdir', ['-p', app])
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({
    name: 'app',
    private: true,
    dependencies: {
      '@discue/mongodb-resource-client': `file:${path.join(dir, packed[0].filename)}`,
      mongodb: '^6.0.0'
    },
    devDependencies: { '@types/node': '^20.0.0' }
  }))
  for (const file of readdirSync(fixtures)) copyFileSync(path.join(fixtures, file), path.join(app, file))
  // The typings test's file, importing from the original's name instead of this folder.
  const usage = readFileSync(path.join(root, '__test__', 'typings', 'usage.ts'), 'utf8')
  writeFileSync(path.join(app, 'usage.ts'), usage.replace("'../../index.js'", "'@discue/mongodb-resource-client'"))
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline'], { cwd: app, stdio: 'pipe' })

  const env = { ...process.env, MONGODB_URL: url }
  t.regex(execFileSync(process.execPath, ['example.cjs'], { cwd: app, env, encoding: 'utf8', timeout: 60_000 }), /cjs example ok/)
  t.regex(execFileSync(process.execPath, ['example.mjs'], { cwd: app, env, encoding: 'utf8', timeout: 60_000 }), /esm example ok/)
  execFileSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: app, stdio: 'pipe' })
  t.pass('tsc --strict accepted every method and option')
})
