// The contended workload's callers, shared by the one-process and the many-process
// runs: `callers` callers loop on one key with a 1 ms critical section until `until`,
// each pausing `pause` ms between the end of one call and the next.
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export async function contendOnOneKey (lock, callers, until, pause = 0) {
  const turns = new Array(callers).fill(0)
  const waits = []
  await Promise.all(turns.map(async (_, caller) => {
    while (Date.now() < until) {
      const asked = Date.now()
      try {
        await lock.doWhileLocked(['hot'], async () => {
          waits.push(Date.now() - asked)
          turns[caller]++
          await sleep(1)
        }, { waitTimeout: 10_000 })
      } catch {
        waits.push(Date.now() - asked)
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
export async function contendOnMutex (callers, until) {
  let tail = Promise.resolve()
  const runExclusive = (fn) => {
    const run = tail.then(fn)
    tail = run.catch(() => {})
    return run
  }
  const lock = { doWhileLocked: (_ids, fn) => runExclusive(fn) }
  return contendOnOneKey(lock, callers, until)
}
