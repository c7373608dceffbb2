// The fault-injection suite (nemesis/run.mjs, checked by nemesis/checker.mjs): worker
// processes of both implementations increment one counter under doWhileLocked while a
// nemesis partitions, pauses, clock-steps and kills holders and restarts the server.
// About a minute per server build; FAULT_SUITE_SECONDS=600 runs ten.
import { execFileSync } from 'node:child_process'
import test from 'ava'
import { libfaketime } from './nemesis/faketime.mjs'
import { FAULT_KINDS, runSuite } from './nemesis/run.mjs'

const seconds = Number(process.env.FAULT_SUITE_SECONDS ?? 60)
if (!(seconds >= 30)) throw new RangeError(`FAULT_SUITE_SECONDS must be at least 30, got ${process.env.FAULT_SUITE_SECONDS}`)

function onPath (name) {
  try {
    return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || undefined
  } catch {
    return undefined
  }
}

const builds = [{ label: 'secantusd-py', binary: undefined }]
const rust = onPath('secantusd-rs')
if (rust) builds.push({ label: 'secantusd-rs', binary: rust })
else {
  console.log('[nemesis] secantusd-rs is not on PATH: the suite runs on secantusd-py only')
  test.skip('fault injection on secantusd-rs (not on PATH)', () => {})
}

for (const { label, binary } of builds) {
  test.serial(`fault injection on ${label}: no unsafe overlap, tokens increase, no lost update, every call settles`, async (t) => {
    t.timeout(seconds * 1_000 + 180_000)
    libfaketime() // fails here, naming the package, when libfaketime is missing
    const lines = []
    const { verdict, schedule, seed, seconds: ran } = await runSuite({ seconds, binary, log: (line) => { lines.push(line); t.log(line) } })
    // Up to 8 violations of each kind, so that a rare kind is not hidden behind many overlaps.
    const byKind = Map.groupBy ? Map.groupBy(verdict.violations, (v) => v.kind) : verdict.violations.reduce((m, v) => m.set(v.kind, [...(m.get(v.kind) ?? []), v]), new Map())
    const report = [
      `[nemesis] ${label}, ${ran} s, seed ${seed} (NEMESIS_SEED replays the schedule)`,
      `[nemesis] schedule: ${schedule.join(', ')}`,
      verdict.table,
      ...[...byKind.values()].flatMap((list) => [
        ...list.slice(0, 8).map((v) => `[nemesis] ${v.kind}: ${v.message}`),
        list.length > 8 ? `[nemesis] ... ${list.length - 8} more of ${list[0].kind}` : ''
      ])
    ].filter(Boolean).join('\n')
    t.log(report)
    console.log(report)
    t.true(verdict.counts.faults >= Math.min(FAULT_KINDS.length, Math.floor(seconds / 10)) || Boolean(process.env.NEMESIS_FAULTS), 'too few faults were injected for the run to mean anything')
    t.true(verdict.counts.holds > 0, 'nobody ever held the lock')
    t.deepEqual(verdict.violations.map((v) => v.kind), [], 'violations (listed above)')
  })
}
