// The fault-injection suite's checker (nemesis/checker.mjs) on hand-made histories:
// it must be able to fail, on each kind of violation, and pass a clean history.
import test from 'ava'
import { check } from './nemesis/checker.mjs'

/** A history builder: `hold(...)` adds a call that held the lock and wrote. */
function history ({ faults = [], store, slots = ['a', 'b'] } = {}) {
  const events = []
  let id = 0
  const h = {
    events,
    faults,
    slots,
    endedAt: 100_000,
    boundMs: 5_000,
    store,
    /** A call asked at `asked`, held from `at`, wrote at each of `writes` ({ at, aborted, accepted }), ended at `end`. */
    hold ({ slot = 'a', pid = 1, impl = 'addon', asked, at, token, writes = [], abortAt, end, waitTimeout = 3_000 }) {
      const call = `c${id++}`
      events.push({ type: 'call', call, slot, pid, impl, at: asked ?? at - 10, waitTimeout })
      events.push({ type: 'hold', call, at, token: impl === 'addon' ? String(token) : null })
      for (const w of writes) events.push({ type: 'write', call, aborted: false, accepted: true, ...w })
      if (abortAt !== undefined) events.push({ type: 'abort', call, at: abortAt, reason: 'lost' })
      if (end !== undefined) events.push({ type: 'end', call, at: end, ok: abortAt === undefined })
      return h
    },
    rejected ({ slot = 'a', pid = 1, asked, end, waitTimeout = 3_000 }) {
      const call = `c${id++}`
      events.push({ type: 'call', call, slot, pid, impl: 'addon', at: asked, waitTimeout })
      events.push({ type: 'end', call, at: end, ok: false, error: 'Unable to establish lock.' })
      return h
    }
  }
  return h
}

const kinds = (verdict) => verdict.violations.map((v) => v.kind)

test('a clean history passes and is tabulated', (t) => {
  const h = history({ store: { n: 3, accepted: 3, refused: 0 } })
    .hold({ slot: 'a', pid: 1, at: 1_000, token: 10, writes: [{ at: 1_050 }], end: 1_060 })
    .hold({ slot: 'b', pid: 2, impl: 'original', at: 1_100, writes: [{ at: 1_150 }], end: 1_160 })
    .hold({ slot: 'a', pid: 1, at: 1_200, token: 11, writes: [{ at: 1_250 }], end: 1_260 })
    .rejected({ slot: 'b', pid: 2, asked: 1_300, end: 4_300 })
  const verdict = check(h)
  t.deepEqual(verdict.violations, [])
  t.true(verdict.ok)
  t.is(verdict.counts.holds, 3)
  t.is(verdict.counts.unsafe, 0)
  t.regex(verdict.table, /\| unsafe overlaps +\| 0 \|/)
  t.regex(verdict.table, /\| lost updates +\| 0 \|/)
})

test('two trusted holds that overlap are an unsafe overlap, with the faults near it', (t) => {
  const faults = [{ kind: 'partition', slot: 'a', pid: 1, start: 1_020, end: 4_000 }]
  const h = history({ faults, store: { n: 3, accepted: 3, refused: 0 } })
    .hold({ slot: 'a', pid: 1, at: 1_000, token: 10, writes: [{ at: 1_050 }, { at: 2_500 }], end: 2_600 })
    .hold({ slot: 'b', pid: 2, at: 2_000, token: 11, writes: [{ at: 2_100 }], end: 2_200 })
  const verdict = check(h)
  t.false(verdict.ok)
  t.deepEqual(kinds(verdict), ['unsafe overlap'])
  t.regex(verdict.violations[0].message, /partition@slota/)
  t.regex(verdict.table, /\| unsafe overlaps +\| 1 \(by 1 holds\) \(faults near: partition 1\) \|/)
})

test('a write made after the signal aborted is not trusted: no overlap', (t) => {
  const h = history({ store: { n: 2, accepted: 2, refused: 1 } })
    .hold({ slot: 'a', pid: 1, at: 1_000, token: 10, writes: [{ at: 1_050 }, { at: 2_500, aborted: true, accepted: false }], abortAt: 1_900, end: 2_600 })
    .hold({ slot: 'b', pid: 2, at: 2_000, token: 11, writes: [{ at: 2_100 }], end: 2_200 })
  const verdict = check(h)
  t.deepEqual(verdict.violations, [])
  t.is(verdict.counts.takeovers, 1)
  t.is(verdict.counts.signals, 1)
})

test('a paused holder whose late writes were all refused is fenced; one accepted is unsafe', (t) => {
  const faults = [{ kind: 'pause', slot: 'a', pid: 1, start: 1_100, end: 3_000 }]
  const build = (accepted) => history({ faults, store: { n: 2, accepted: accepted ? 3 : 2, refused: accepted ? 0 : 1 } })
    .hold({ slot: 'a', pid: 1, at: 1_000, token: 10, writes: [{ at: 1_050 }, { at: 3_010, accepted }], end: 3_020 })
    .hold({ slot: 'b', pid: 2, at: 2_200, token: 11, writes: [{ at: 2_300 }], end: 2_400 })
  const fenced = check(build(false))
  t.deepEqual(fenced.violations, [])
  t.is(fenced.counts.fenced, 1)
  const accepted = check(build(true))
  t.deepEqual(kinds(accepted), ['unsafe overlap', 'lost update'])
})

test('the same late write without a pause is unsafe even though the store refused it', (t) => {
  const h = history({ store: { n: 2, accepted: 2, refused: 1 } })
    .hold({ slot: 'a', pid: 1, at: 1_000, token: 10, writes: [{ at: 1_050 }, { at: 3_010, accepted: false }], end: 3_020 })
    .hold({ slot: 'b', pid: 2, at: 2_200, token: 11, writes: [{ at: 2_300 }], end: 2_400 })
  t.deepEqual(kinds(check(h)), ['unsafe overlap'])
})

test('fencing tokens that do not increase in hold order are an inversion', (t) => {
  const h = history({ store: { n: 2, accepted: 2, refused: 0 } })
    .hold({ slot: 'a', pid: 1, at: 1_000, token: 11, writes: [{ at: 1_050 }], end: 1_060 })
    .hold({ slot: 'b', pid: 2, at: 1_100, token: 10, writes: [{ at: 1_150 }], end: 1_160 })
  const verdict = check(h)
  t.deepEqual(kinds(verdict), ['token inversion'])
  t.regex(verdict.table, /\| token inversions +\| 1 \|/)
  // Tokens beyond 2^53 are compared exactly.
  const big = history({ store: { n: 2, accepted: 2, refused: 0 } })
    .hold({ slot: 'a', pid: 1, at: 1_000, token: '7447000000000000001', writes: [{ at: 1_050 }], end: 1_060 })
    .hold({ slot: 'b', pid: 2, at: 1_100, token: '7447000000000000000', writes: [{ at: 1_150 }], end: 1_160 })
  t.deepEqual(kinds(check(big)), ['token inversion'])
})

test('a store that counts fewer increments than it accepted lost an update', (t) => {
  const h = history({ store: { n: 1, accepted: 2, refused: 0 } })
    .hold({ slot: 'a', pid: 1, at: 1_000, token: 10, writes: [{ at: 1_050 }], end: 1_060 })
    .hold({ slot: 'b', pid: 2, at: 1_100, token: 11, writes: [{ at: 1_150 }], end: 1_160 })
  const verdict = check(h)
  t.deepEqual(kinds(verdict), ['lost update'])
  t.regex(verdict.table, /\| lost updates +\| 1 \|/)
})

test('a call that waits past waitTimeout + the bound, one that never settles, a slot without turns and a crash fail', (t) => {
  const h = history({ slots: ['a', 'b', 'c'], store: { n: 2, accepted: 2, refused: 0 } })
    .hold({ slot: 'a', pid: 1, asked: 1_000, at: 1_100, token: 10, writes: [{ at: 1_150 }], end: 1_160 })
    .hold({ slot: 'b', pid: 2, asked: 1_000, at: 9_500, token: 11, writes: [{ at: 9_550 }], end: 9_560 })
  h.events.push({ type: 'call', call: 'pending', slot: 'a', pid: 1, impl: 'addon', at: 10_000, waitTimeout: 3_000 })
  h.events.push({ type: 'call', call: 'killed', slot: 'a', pid: 3, impl: 'addon', at: 10_000, waitTimeout: 3_000 })
  h.faults.push({ kind: 'kill', slot: 'a', pid: 3, start: 10_500 })
  t.deepEqual(kinds(check(h)).sort(), ['late call', 'no turns', 'unsettled call'])
  h.faults.push({ kind: 'crash', slot: 'a', pid: 1, start: 11_000 })
  t.deepEqual(kinds(check(h)).sort(), ['crash', 'late call', 'no turns'], 'a crashed worker fails the run (its unfinished call does not)')
})
