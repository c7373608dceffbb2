// The contended workload's callers, shared by the one-process and the many-process
// runs: `callers` callers loop on one key (`key`) with a critical section of `hold`
// ms (1 unless told) until `until`, each pausing `pause` ms between the end of one
// call and the next. Only calls asked from `from` on are counted: before that is the
// warm-up.
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export async function contendOnOneKey (lock, callers, { from, until }, pause = 0, { key = 'hot', hold = 1 } = {}) {
  const turns = new Array(callers).fill(0)
  const waits = []
  await Promise.all(turns.map(async (_, caller) => {
    while (Date.now() < until) {
      const asked = Date.now()
      const counted = asked >= from
      try {
        await lock.doWhileLocked([key], async () => {
          if (counted) {
            waits.push(Date.now() - asked)
            turns[caller]++
          }
          await sleep(hold)
        }, { waitTimeout: 10_000 })
      } catch {
        if (counted) waits.push(Date.now() - asked)
      }
      if (pause) await sleep(pause)
    }
  }))
  return { turns, waits }
}

/**
 * The ceiling for one process: the same callers and section on an in-process FIFO
 * mutex (what async-mutex's runExclusive does), with no database at all.
 */
export async function contendOnMutex (callers, period) {
  let tail = Promise.resolve()
  const runExclusive = (fn) => {
    const run = tail.then(fn)
    tail = run.catch(() => {})
    return run
  }
  const lock = { doWhileLocked: (_ids, fn) => runExclusive(fn) }
  return contendOnOneKey(lock, callers, period)
}
