// Steps the wall clock of one process with libfaketime (Debian package `faketime`),
// as an NTP step does: Date.now() and Rust's SystemTime jump, the monotonic clock
// (performance.now(), tokio's Instant) runs on. Each process gets an offset file that
// libfaketime reads on every call (FAKETIME_NO_CACHE); writing it moves that clock.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

/** The path of libfaketime.so.1, or an error that names the package to install. */
export function libfaketime () {
  let found = process.env.LIBFAKETIME
  if (!found) {
    let listed = ''
    try {
      listed = execFileSync('dpkg', ['-L', 'libfaketime'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    } catch {}
    found = listed.split('\n').find((line) => line.endsWith('/libfaketime.so.1'))
  }
  if (!found || !existsSync(found)) {
    throw new Error('libfaketime is missing: install the Debian package `faketime` (apt-get install faketime, as .ci/run does), or set LIBFAKETIME to the path of libfaketime.so.1')
  }
  return found
}

/** The wall clock of the processes started with `env()`: `set(+10)` steps it 10 s ahead. */
export class FakeClock {
  constructor (initialSeconds = 0) {
    this.library = libfaketime()
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'mrl-faketime-'))
    this.file = path.join(this.dir, 'offset')
    this.offset = 0
    this.set(initialSeconds)
  }

  /** Environment variables for a child process that should run on this clock. */
  env () {
    return {
      LD_PRELOAD: this.library,
      FAKETIME_TIMESTAMP_FILE: this.file,
      FAKETIME_NO_CACHE: '1',
      FAKETIME_DONT_FAKE_MONOTONIC: '1'
    }
  }

  /** Sets the offset from the real wall clock, in seconds (atomically: write, rename). */
  set (seconds) {
    this.offset = seconds
    const temp = `${this.file}.tmp`
    writeFileSync(temp, `${seconds >= 0 ? '+' : ''}${seconds}\n`)
    renameSync(temp, this.file)
  }

  step (seconds) {
    this.set(this.offset + seconds)
  }

  remove () {
    rmSync(this.dir, { recursive: true, force: true })
  }
}
