// The checker of the fault-injection suite: a recorded history in, a verdict and a
// table out. Pure: no I/O, so that checker.spec.mjs can show it able to fail.
//
// A history is
//   { events, faults, store: { n, accepted, refused }, slots, endedAt, boundMs }
// events (times in ms on performance.timeOrigin + performance.now()):
//   { type: 'call',  call, slot, pid, impl: 'addon'|'original', at, waitTimeout }
//   { type: 'hold',  call, at, token }            token: a decimal string, or null (original)
//   { type: 'write', call, at, aborted, accepted, n } accepted: true, false (refused), null (unknown);
//                                                 a refused read is one too, with op: 'read'
//   { type: 'abort', call, at, reason }           the hold's context.signal aborted
//   { type: 'left',  call, at }                   the holder left its critical section
//   { type: 'end',   call, at, ok, error }
// faults: { kind, slot, pid, start, end }; a 'pause' is the SIGSTOP..SIGCONT interval,
// a 'kill' ends its pid (its unfinished calls are not held against anybody); a 'crash'
// (a worker that exited on its own, recorded by the harness) is a violation.
//
// Safety: a hold is trusted from its start to the last store write it made while its
// signal was not aborted. Two trusted holds must not overlap, unless the earlier
// holder's process was paused (SIGSTOP) during its hold and every write it made after
// the later hold began was refused by the store ("fenced"). Fencing tokens strictly
// increase in hold order. The store's counter equals the increments it accepted.
// Liveness: every call stops waiting within its waitTimeout plus `boundMs`, and every
// worker slot gets turns.

/**
 * How long after a fault it may still explain an overlap: a few seconds, but for a
 * clock step as long as a wrong server-clock offset measured during it can last (it is
 * refreshed every 30 s).
 */
const faultWindow = (fault) => fault.kind.startsWith('clock') ? 35_000 : 5_000

export function check (history) {
  const { events, faults = [], store, slots = [], endedAt, boundMs = 5_000 } = history
  const calls = new Map()
  for (const event of events) {
    if (event.type === 'call') {
      calls.set(event.call, { ...event, start: event.at, writes: [] })
      continue
    }
    const call = calls.get(event.call)
    if (!call) continue
    if (event.type === 'hold') Object.assign(call, { heldAt: event.at, token: event.token ?? null })
    else if (event.type === 'write') call.writes.push(event)
    else if (event.type === 'abort') call.abortedAt ??= event.at
    else if (event.type === 'left') call.leftAt = event.at
    else if (event.type === 'end') Object.assign(call, { endAt: event.at, ok: event.ok, error: event.error })
  }
  const killedAt = new Map(faults.filter((f) => f.kind === 'kill' || f.kind === 'crash').map((f) => [f.pid, f.start]))
  const holds = [...calls.values()].filter((c) => c.heldAt !== undefined)
  for (const hold of holds) {
    hold.writes.sort((a, b) => a.at - b.at)
    const trusted = hold.writes.filter((w) => !w.aborted)
    hold.trustedEnd = trusted.length ? trusted[trusted.length - 1].at : undefined
    hold.until = hold.endAt ?? killedAt.get(hold.pid) ?? endedAt
  }
  holds.sort((a, b) => a.heldAt - b.heldAt)
  const violations = []
  const describe = (h) => `${h.impl} slot ${h.slot} pid ${h.pid} call ${h.call}${h.token ? ` token ${h.token}` : ''}`
  // The fault that most likely explains an overlap: the latest one that can, namely a
  // pause or partition of the earlier holder during its hold, or a clock step of either
  // holder (its wrong offset may last until the next refresh); else every fault around
  // it (a server restart, or none).
  const faultsNear = (earlier, later) => {
    const around = faults.filter((f) => f.start <= earlier.trustedEnd && (f.end ?? f.start) + faultWindow(f) >= earlier.heldAt)
    const direct = around.filter((f) => f.kind.startsWith('clock')
      ? f.slot === earlier.slot || f.slot === later.slot
      : (f.kind === 'pause' || f.kind === 'partition') && f.slot === earlier.slot && f.start < earlier.trustedEnd && f.end > earlier.heldAt)
    return direct.length ? [direct.reduce((a, b) => (b.start > a.start ? b : a))] : around
  }

  // Overlaps of trusted holds.
  const trusted = holds.filter((h) => h.trustedEnd !== undefined)
  const fencedPairs = new Set()
  const overlaps = { unsafe: [], fenced: [] }
  for (let j = 0; j < trusted.length; j++) {
    const later = trusted[j]
    for (let i = 0; i < j; i++) {
      const earlier = trusted[i]
      if (earlier.trustedEnd <= later.heldAt) continue
      const paused = faults.some((f) => f.kind === 'pause' && f.pid === earlier.pid && f.start < earlier.trustedEnd && f.end > earlier.heldAt)
      const lateWrites = earlier.writes.filter((w) => !w.aborted && w.at >= later.heldAt)
      if (paused && lateWrites.every((w) => w.accepted === false)) {
        overlaps.fenced.push({ earlier, later })
        fencedPairs.add(`${earlier.call} ${later.call}`)
        continue
      }
      const near = faultsNear(earlier, later)
      overlaps.unsafe.push({ earlier, later, faults: near })
      violations.push({
        kind: 'unsafe overlap',
        message: `${describe(earlier)} wrote until ${Math.round(earlier.trustedEnd - later.heldAt)} ms after ${describe(later)} began to hold` +
          ` (its signal ${earlier.abortedAt === undefined ? 'never aborted' : `aborted ${Math.round(earlier.abortedAt - later.heldAt)} ms after`};` +
          ` late writes ${lateWrites.map((w) => String(w.accepted)).join(',')}; faults near: ${near.map((f) => `${f.kind}@slot${f.slot}`).join(', ') || 'none'})`
      })
    }
  }

  // Fencing tokens in hold order.
  const tokened = trusted.filter((h) => h.token !== null && h.token !== undefined)
  let inversions = 0
  for (let k = 1; k < tokened.length; k++) {
    const [a, b] = [tokened[k - 1], tokened[k]]
    if (BigInt(b.token) > BigInt(a.token) || fencedPairs.has(`${a.call} ${b.call}`)) continue
    inversions++
    violations.push({ kind: 'token inversion', message: `${describe(b)} held after ${describe(a)}` })
  }

  // Lost updates.
  const lost = store.accepted - store.n
  if (lost !== 0) {
    // The evidence: accepted writes of the same value (both read the same n).
    const byValue = new Map()
    for (const hold of holds) {
      for (const w of hold.writes) {
        if (w.accepted !== true || w.n === undefined) continue
        byValue.set(w.n, [...(byValue.get(w.n) ?? []), `${describe(hold)} at ${Math.round(w.at)}`])
      }
    }
    const twice = [...byValue.entries()].filter(([, writers]) => writers.length > 1).slice(0, 5)
    violations.push({
      kind: 'lost update',
      message: `the store accepted ${store.accepted} increments but counts ${store.n}` +
        twice.map(([n, writers]) => `; n = ${n} written by ${writers.join(' and ')}`).join('')
    })
  }
  const recordedAccepted = holds.reduce((sum, h) => sum + h.writes.filter((w) => w.accepted === true).length, 0)
  const recordedUnknown = holds.reduce((sum, h) => sum + h.writes.filter((w) => w.accepted === null).length, 0)
  // A worker killed inside its critical section may have had one write applied that it
  // never lived to record.
  const cutShort = holds.filter((h) => killedAt.has(h.pid) && h.leftAt === undefined).length
  if (recordedAccepted > store.accepted || store.accepted > recordedAccepted + recordedUnknown + cutShort) {
    violations.push({ kind: 'store mismatch', message: `workers saw ${recordedAccepted} accepted writes (+${recordedUnknown} unknown, +${cutShort} cut short by a kill), the store counts ${store.accepted}` })
  }

  // Liveness.
  let late = 0
  for (const call of calls.values()) {
    const stoppedWaiting = call.heldAt ?? call.endAt
    const limit = call.waitTimeout + boundMs
    if (stoppedWaiting === undefined) {
      if (killedAt.has(call.pid)) continue
      late++
      violations.push({ kind: 'unsettled call', message: `${describe(call)} asked at ${Math.round(call.start)} and never settled` })
    } else if (stoppedWaiting - call.start > limit) {
      late++
      violations.push({ kind: 'late call', message: `${describe(call)} waited ${Math.round(stoppedWaiting - call.start)} ms (waitTimeout ${call.waitTimeout} ms + ${boundMs} ms)` })
    }
  }
  for (const crash of faults.filter((f) => f.kind === 'crash')) {
    violations.push({ kind: 'crash', message: `worker ${crash.slot} (pid ${crash.pid}) exited on its own` })
  }
  const starved = slots.filter((slot) => !holds.some((h) => h.slot === slot))
  for (const slot of starved) violations.push({ kind: 'no turns', message: `slot ${slot} never held the lock` })

  // Takeovers: holds during which somebody else began to hold (lease passed, or worse).
  // A later hold that began before the earlier holder left its critical section: the
  // lock was taken from it (its lease passed), not handed over on release.
  const takeovers = holds.filter((earlier) => holds.some((later) => later !== earlier && earlier.heldAt < later.heldAt && (earlier.leftAt ?? earlier.until) > later.heldAt)).length
  const byKind = (list) => {
    const counts = {}
    for (const item of list) counts[item] = (counts[item] ?? 0) + 1
    return Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ')
  }
  const injected = faults.filter((f) => f.kind !== 'crash')
  const rows = [
    ['faults injected', `${injected.length}${injected.length ? ` (${byKind(injected.map((f) => f.kind))})` : ''}`],
    ['calls', `${calls.size} (${[...calls.values()].filter((c) => c.ok === false).length} rejected)`],
    ['holds', `${holds.length} (addon ${holds.filter((h) => h.impl === 'addon').length}, original ${holds.filter((h) => h.impl === 'original').length})`],
    ['takeovers', String(takeovers)],
    ['signals aborted', String(holds.filter((h) => h.abortedAt !== undefined).length)],
    ['store writes', `${store.accepted} accepted, ${store.refused} refused`],
    ['fenced overlaps', `${overlaps.fenced.length}${overlaps.fenced.length ? ` (by ${new Set(overlaps.fenced.map((o) => o.earlier.call)).size} paused holds)` : ''}`],
    ['unsafe overlaps', `${overlaps.unsafe.length}${overlaps.unsafe.length ? ` (by ${new Set(overlaps.unsafe.map((o) => o.earlier.call)).size} holds)` : ''}${overlaps.unsafe.length ? ` (faults near: ${byKind(overlaps.unsafe.flatMap((o) => [...new Set(o.faults.map((f) => f.kind))]))})` : ''}`],
    ['token inversions', String(inversions)],
    ['lost updates', String(lost)],
    ['late or unsettled calls', String(late)],
    ['workers without turns', String(starved.length)],
    ['worker crashes', String(faults.filter((f) => f.kind === 'crash').length)]
  ]
  const width = Math.max(...rows.map(([k]) => k.length))
  const text = rows.map(([k, v]) => `| ${k.padEnd(width)} | ${v} |`).join('\n')
  return {
    ok: violations.length === 0,
    violations,
    counts: {
      faults: injected.length,
      calls: calls.size,
      holds: holds.length,
      takeovers,
      signals: holds.filter((h) => h.abortedAt !== undefined).length,
      fenced: overlaps.fenced.length,
      unsafe: overlaps.unsafe.length,
      inversions,
      lost,
      late,
      starved: starved.length
    },
    table: text
  }
}
