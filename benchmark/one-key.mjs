// The contended workload's callers, shared by the one-process and the four-process
// runs: `callers` callers loop on one key with a 1 ms critical section until `until`.
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export async function contendOnOneKey (lock, callers, until) {
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
    }
  }))
  return { turns, waits }
}
