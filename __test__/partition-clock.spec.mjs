// Faults around one holder: cut off from the server (a frozen TCP proxy), and wall
// clocks that step or are skewed (libfaketime). Times are compared across processes on
// performance.timeOrigin + performance.now(): the monotonic clock, which a wall-clock
// step does not move. Serial: each test is a timeline.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import { MongoNetworkError } from 'mongodb'
import { FakeClock } from './nemesis/faketime.mjs'
import { startProxy, throughProxy } from './nemesis/proxy.mjs'
import { ResourceLock, addonLock, deferred, eventually, freshDatabase, sleep, url } from './helpers.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const now = () => performance.timeOrigin + performance.now()

/** fixtures/lock-worker.mjs in a process of its own (on a fake clock if `env` says so). */
function lockWorker (t, databaseName, env = {}) {
  const child = spawn(process.execPath, [path.join(here, 'fixtures', 'lock-worker.mjs'), databaseName], {
    env: { ...process.env, MONGODB_URL: url, ...env },
    stdio: ['pipe', 'pipe', 'inherit']
  })
  const waiting = new Map()
  let next = 0
  createInterface({ input: child.stdout }).on('line', (line) => {
    const answer = JSON.parse(line)
    waiting.get(answer.id)?.resolve(answer)
    waiting.delete(answer.id)
  })
  child.once('exit', (code, signal) => {
    for (const w of waiting.values()) w.reject(new Error(`lock worker exited (${code ?? signal})`))
  })
  t.teardown(() => child.kill('SIGKILL'))
  return {
    ask (command) {
      const id = next++
      return new Promise((resolve, reject) => {
        waiting.set(id, { resolve, reject })
        child.stdin.write(JSON.stringify({ id, ...command }) + '\n')
      })
    }
  }
}

/** How far the worker's wall clock is ahead of ours, in ms (to within the round trip). */
async function skewOf (worker) {
  const { wallMs } = await worker.ask({ cmd: 'clock' })
  return wallMs - Date.now()
}

/** Settles to { value } or { error }, never rejects. */
const settled = (promise) => promise.then((value) => ({ value }), (error) => ({ error }))

/**
 * A holder that reaches the server through a TCP proxy that can be frozen, and a taker
 * that reaches it directly: both connected and with a measured server clock before
 * the timeline starts.
 */
async function holderBehindProxy (t, { retryWrites = true } = {}) {
  const { name, db } = await freshDatabase(t)
  const proxy = await startProxy(new URL(url).port || 27017)
  const proxied = new URL(throughProxy(url, proxy.port))
  if (!retryWrites) proxied.searchParams.set('retryWrites', 'false')
  const holder = new ResourceLock({ url: proxied.toString(), databaseName: name })
  t.teardown(async () => {
    proxy.thaw()
    await holder.close().catch(() => {})
    await proxy.stop()
  })
  const taker = addonLock(t, name)
  await holder.doWhileLocked(['warm-up'], () => {})
  await taker.doWhileLocked(['warm-up'], () => {})
  return { proxy, holder, taker, locks: db.collection('_locks'), url: proxied.toString() }
}

test.serial('a holder cut off from the server is told no later than its lease deadline, before anyone takes over', async (t) => {
  const { proxy, holder, taker } = await holderBehindProxy(t)
  const lease = 1_000

  let heldAt
  let abortedAt
  const inside = deferred()
  const letGo = deferred()
  const holding = settled(holder.doWhileLocked(['cut-off'], async ({ signal }) => {
    heldAt = now()
    signal.addEventListener('abort', () => { abortedAt = now() })
    inside.resolve()
    await letGo.promise
  }, { lease, lockTimeout: Infinity }))
  await inside.promise
  await sleep(400)
  proxy.freeze()
  const frozenAt = now()

  let tookAt
  const taken = await settled(taker.doWhileLocked(['cut-off'], () => { tookAt = now() }, { waitTimeout: 5_000 }))
  t.is(taken.error, undefined, 'B took the key over once the cut-off holder\'s lease had passed')
  // Give the holder's signal every chance: up to 2 s after B started.
  await eventually(() => abortedAt !== undefined, 2_000)
  const checkedAt = now()
  letGo.resolve()
  proxy.thaw()
  await Promise.race([holding, sleep(10_000)])

  t.log(`held at 0 ms, frozen at ${Math.round(frozenAt - heldAt)} ms, B took over at ${Math.round(tookAt - heldAt)} ms, A told at ${abortedAt === undefined ? 'never (2 s after B)' : `${Math.round(abortedAt - heldAt)} ms`}`)
  t.not(abortedAt, undefined, `A's context.signal had not aborted ${Math.round(checkedAt - tookAt)} ms after B took over the key`)
  t.true(abortedAt <= tookAt, `A was told ${Math.round(abortedAt - tookAt)} ms after B took over`)
  // Its last renewal was sent before the freeze, so its lease ends within `lease` of it.
  t.true(abortedAt - frozenAt <= lease + 500, `A was told ${Math.round(abortedAt - frozenAt)} ms after the freeze (lease ${lease} ms)`)
})

test.serial('an extend() asked while a renewal hangs is written as soon as that renewal returns: nobody takes over', async (t) => {
  const { proxy, holder, taker } = await holderBehindProxy(t)

  const lease = 3_000
  const handle = await holder.acquire(['extended'], { lease })
  const heldAt = now()
  await sleep(700)
  proxy.freeze() // the renewal due a third of the lease in hangs
  await sleep(500)
  let extendedAt
  const extending = settled(handle.extend(30_000).then(() => { extendedAt = now() }))
  await sleep(400)
  t.is(extendedAt, undefined, 'the renewal due a third of the lease in was held up by the freeze')
  proxy.thaw()
  const thawedAt = now()
  // The renewal in flight wrote the 3 s lease; the 30 s one must follow it at once,
  // not a third of 30 s later, when the 3 s lease would long have passed.
  const extended = await Promise.race([extending, sleep(5_000).then(() => ({ error: 'not settled 5 s after the thaw' }))])
  t.is(extended.error, undefined)
  t.log(`extend() settled ${Math.round(extendedAt - thawedAt)} ms after the thaw`)
  await sleep(Math.max(0, heldAt + lease + 1_000 - now()))
  t.is(await taker.tryAcquire(['extended']), null, 'nobody took the lock over after the 3 s lease')
  t.false(handle.signal.aborted)
  t.true(await handle.release())
})

test.serial('a renewal that reaches the server after a later one does not move the lease back', async (t) => {
  // Without retryable writes the driver gives up on a renewal whose connection breaks,
  // and the keeper sends the next one; the first can still be on its way, and here the
  // proxy delivers it once the second was written.
  const { proxy, holder, locks } = await holderBehindProxy(t, { retryWrites: false })
  const lease = 3_000
  const handle = await holder.acquire(['late'], { lease })
  const expiry = async () => (await locks.findOne({ id: 'late' })).lease_expires_at.getTime()
  const acquiredExpiry = await expiry()
  await proxy.holdNext('update', '$set', 'lease_expires_at') // the renewal due a third of the lease in
  t.true(await eventually(async () => (await expiry()) > acquiredExpiry, 5_000), 'the holder renewed after its first renewal broke')
  const renewedExpiry = await expiry()
  const delivered = proxy.deliverLate()
  t.is(await Promise.race([delivered, sleep(2_000).then(() => 'no reply')]), 'late reply', 'the server answered the late renewal')
  const final = await locks.findOne({ id: 'late' })
  t.is(final.lease_expires_at.getTime(), renewedExpiry, `the end of the lease moved by ${final.lease_expires_at.getTime() - renewedExpiry} ms`)
  t.is(final.renewed?.count, 2, 'the second renewal is the last one written')
  t.false(handle.signal.aborted)
  t.true(await handle.release())
})

test.serial('a release whose write is lost is tried again: the key is free long before the lease ends', async (t) => {
  // Without retryable writes the driver reports the lost delete at once; the lock would
  // otherwise block every other caller for its whole lease.
  const { proxy, holder, taker, locks } = await holderBehindProxy(t, { retryWrites: false })
  const done = await settled(holder.doWhileLocked(['lost-release'], () => proxy.holdNext('findAndModify', 'remove'), { lease: 30_000 }))
  t.true(done.error instanceof MongoNetworkError, `the release's delete was lost: ${done.error ?? 'resolved'}`)
  t.true(await eventually(async () => (await locks.countDocuments({ id: 'lost-release' })) === 0, 3_000), 'the lock was deleted within 3 s')
  t.true(await taker.doWhileLocked(['lost-release'], () => true, { waitTimeout: 0 }))
})

test.serial('unlock() retried after its delete was applied with the reply lost leaves the next holder alone', async (t) => {
  const { proxy, holder, taker, locks } = await holderBehindProxy(t, { retryWrites: false })
  await holder.lock(['u'], { lease: 30_000 })
  await proxy.holdNext('findAndModify', 'remove')
  const first = await settled(holder.unlock(['u']))
  t.true(first.error instanceof MongoNetworkError, `the delete's reply was lost: ${first.error ?? 'resolved'}`)
  t.is(await proxy.deliverLate(), 'late reply')
  t.is(await locks.countDocuments({ id: 'u' }), 0, 'the delete was applied')
  await taker.lock(['u'], { lease: 30_000 })
  const retried = await settled(holder.unlock(['u']))
  t.is(retried.error?.code, 'ERR_LOCK_NOT_DELETED', 'the retry finds its own lock gone')
  t.is(await locks.countDocuments({ id: 'u' }), 1, 'the next holder\'s lock is still there')
})

test.serial('a lock() whose insert is delivered after it rejected leaves no lock behind, even without a lease', async (t) => {
  const { proxy, holder, locks } = await holderBehindProxy(t, { retryWrites: false })
  await proxy.holdNext('insert', '_locks')
  const done = await settled(holder.lock(['late-lock']))
  t.true(done.error instanceof MongoNetworkError, `the insert was lost: ${done.error ?? 'resolved'}`)
  t.is(await proxy.deliverLate(), 'late reply')
  t.true(await eventually(async () => (await locks.countDocuments({ id: 'late-lock' })) === 0, 3_000), 'no lock left within 3 s')
})

test.serial('a write still in flight when its wait times out, delivered late, leaves no lock behind', async (t) => {
  const { proxy, holder, locks } = await holderBehindProxy(t, { retryWrites: false })
  await proxy.holdNext('insert', '_locks')
  const done = await settled(holder.doWhileLocked(['timed-out'], () => {}, { lease: 30_000, waitTimeout: 300 }))
  // Usually the timeout: the insert's own clean-up waits for the server to be selected
  // again after the cut, longer than 300 ms. Either way the write is given up on.
  t.true(done.error?.code === 'ERR_LOCK_WAIT_TIMEOUT' || done.error instanceof MongoNetworkError, String(done.error))
  t.log(done.error?.code ?? done.error?.name)
  await sleep(300) // the write's connection is cut, and the driver gives up on it
  t.is(await proxy.deliverLate(), 'late reply')
  t.true(await eventually(async () => (await locks.countDocuments({ id: 'timed-out' })) === 0, 3_000), 'no lock left within 3 s')
})

test.serial('an insert delivered after its caller gave up on it leaves no lock behind', async (t) => {
  const { proxy, holder, locks } = await holderBehindProxy(t, { retryWrites: false })
  await proxy.holdNext('insert', '_locks')
  const done = await settled(holder.doWhileLocked(['late-insert'], () => {}, { lease: 30_000 }))
  t.true(done.error instanceof MongoNetworkError, `the insert was lost: ${done.error ?? 'resolved'}`)
  t.is(await proxy.deliverLate(), 'late reply')
  // The late insert has landed. The caller's clean-up, tried when it gave up and again
  // a second later, deletes its lock, whichever came first (without it the lock stays
  // for its 30 s lease).
  t.true(await eventually(async () => (await locks.countDocuments({ id: 'late-insert' })) === 0, 3_000), 'no lock left within 3 s')
})

test.serial('a process that ends after its release failed, without close(), tries the release again first', async (t) => {
  const { proxy, locks, url: proxied } = await holderBehindProxy(t, { retryWrites: false })
  const child = spawn(process.execPath, [path.join(here, 'fixtures', 'lose-release-and-exit.mjs'), locks.dbName, 'exiting'], {
    env: { ...process.env, MONGODB_URL: proxied },
    stdio: ['pipe', 'pipe', 'inherit']
  })
  t.teardown(() => child.kill('SIGKILL'))
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  t.is((await lines.next()).value, 'inside')
  await proxy.holdNext('findAndModify', 'remove')
  child.stdin.write('go\n')
  t.is((await lines.next()).value, 'MongoNetworkError', 'the release\'s delete was lost')
  const [code] = await once(child, 'exit')
  t.is(code, 0)
  t.is(await locks.countDocuments({ id: 'exiting' }), 0, 'the lock was released before the process ended')
})

test.serial('a handle whose lease ran out while cut off deletes its lock when it can, without release()', async (t) => {
  const { proxy, holder, locks } = await holderBehindProxy(t)
  const handle = await holder.acquire(['lost-handle'], { lease: 1_000 })
  proxy.freeze()
  const aborted = new Promise((resolve) => handle.signal.addEventListener('abort', resolve))
  t.not(await Promise.race([aborted, sleep(3_000).then(() => 'not aborted')]), 'not aborted')
  t.is(await locks.countDocuments({ id: 'lost-handle' }), 1, 'nobody took the expired lock over')
  proxy.thaw()
  t.true(await eventually(async () => (await locks.countDocuments({ id: 'lost-handle' })) === 0, 3_000), 'deleted within 3 s of the thaw')
  t.false(await handle.release(), 'release() of a lost lock')
  const closing = Date.now()
  await holder.close()
  t.true(Date.now() - closing < 2_000, `close() took ${Date.now() - closing} ms`)
})

test.serial('a caller cut off from the server still gives up at its waitTimeout, and at once when its signal aborts', async (t) => {
  const { name } = await freshDatabase(t)
  const proxy = await startProxy(new URL(url).port || 27017)
  const caller = new ResourceLock({ url: throughProxy(url, proxy.port), databaseName: name })
  t.teardown(async () => {
    proxy.thaw()
    await caller.close().catch(() => {})
    await proxy.stop()
  })
  await caller.doWhileLocked(['warm-up'], () => {})
  proxy.freeze()
  const askedAt = now()
  const ran = []
  const outcome = (promise) => promise.then(() => ({ at: now(), resolved: true }), (error) => ({ at: now(), error }))
  const timingOut = outcome(caller.doWhileLocked(['timing-out'], () => { ran.push('timing-out') }, { waitTimeout: 1_000 }))
  const controller = new AbortController()
  const aborting = outcome(caller.doWhileLocked(['aborting'], () => { ran.push('aborting') }, { waitTimeout: 60_000, signal: controller.signal }))
  await sleep(500)
  controller.abort()
  const settledBeforeThaw = []
  timingOut.then(() => settledBeforeThaw.push('timing-out'))
  aborting.then(() => settledBeforeThaw.push('aborting'))
  await sleep(3_500) // cut off for 4 s in all
  const pending = ['timing-out', 'aborting'].filter((k) => !settledBeforeThaw.includes(k))
  proxy.thaw()
  const [timedOut, aborted] = await Promise.race([Promise.all([timingOut, aborting]), sleep(10_000).then(() => [{}, {}])])
  t.deepEqual(pending, [], `still waiting 4 s after asking (waitTimeout 1 s; signal aborted at 0.5 s): ${pending.join(', ')}`)
  t.deepEqual(ran, [], 'a callback ran after its call should have given up')
  t.is(timedOut.error?.message, 'Unable to establish lock.', `waitTimeout: ${timedOut.resolved ? `resolved after ${Math.round(timedOut.at - askedAt)} ms` : timedOut.error}`)
  t.is(aborted.error?.name, 'AbortError', `signal: ${aborted.resolved ? `resolved after ${Math.round(aborted.at - askedAt)} ms` : aborted.error}`)
})

test.serial('a process whose wall clock steps 10 s ahead does not take over a lease that is being renewed', async (t) => {
  const clock = new FakeClock(0)
  t.teardown(() => clock.remove())
  const { name } = await freshDatabase(t)
  const holder = addonLock(t, name)
  const stepped = lockWorker(t, name, clock.env())
  await stepped.ask({ cmd: 'warm' }) // measures the server clock

  let signal
  const inside = deferred()
  const letGo = deferred()
  const holding = settled(holder.doWhileLocked(['stepped'], async (context) => {
    signal = context.signal
    inside.resolve()
    await letGo.promise
  }, { lease: 3_000, lockTimeout: Infinity })) // renewed every second
  await inside.promise
  clock.step(10)
  const skew = await skewOf(stepped)
  t.true(skew > 9_000, `libfaketime did not step the clock (${skew} ms)`)
  await sleep(100)
  const taken = await stepped.ask({ cmd: 'take', key: 'stepped', options: { waitTimeout: 1_500 } })
  const abortedWhileB = signal.aborted
  letGo.resolve()
  const held = await holding

  t.false(taken.took, `B ran its callback ${Math.round(taken.waitedMs)} ms after asking, while A held the key (A's signal aborted then: ${abortedWhileB})`)
  t.is(taken.error, 'Unable to establish lock.')
  t.false(abortedWhileB, 'A lost its lock')
  t.is(held.error, undefined, `A's hold failed: ${held.error?.message}`)
})

test.serial('a holder whose wall clock steps 10 s back keeps its lease: nobody takes over while it holds', async (t) => {
  const clock = new FakeClock(0)
  t.teardown(() => clock.remove())
  const { name, db } = await freshDatabase(t)
  const taker = addonLock(t, name)
  await taker.doWhileLocked(['warm-up'], () => {})
  const stepped = lockWorker(t, name, clock.env())
  await stepped.ask({ cmd: 'warm' })
  const holding = stepped.ask({ cmd: 'take', key: 'back', options: { lease: 1_000, lockTimeout: 'Infinity' }, holdMs: 4_000 })
  t.true(await eventually(async () => (await db.collection('_locks').countDocuments({ id: 'back' })) === 1), 'the stepped process did not take the key')
  clock.step(-10) // its renewals now compute the server's time 10 s too early
  const skew = await skewOf(stepped)
  t.true(skew < -9_000, `libfaketime did not step the clock (${skew} ms)`)
  const askedAt = now()
  let tookAt
  const taken = await settled(taker.doWhileLocked(['back'], () => { tookAt = now() }, { waitTimeout: 2_500 }))
  const held = await holding

  t.is(tookAt, undefined, `the taker ran its callback ${Math.round(tookAt - askedAt)} ms after asking, while the stepped process held the key (its hold: ${JSON.stringify(held)})`)
  t.is(taken.error?.message, 'Unable to establish lock.')
  t.true(held.took && held.error === undefined, `the stepped holder's hold failed: ${held.error}`)
})

// The README's promise: lease expiry is judged on the server's clock, so a client whose
// clock is off by a constant neither takes over a live lease nor waits past an expired one.
for (const skew of [3_600, -30]) {
  test.serial(`a client whose wall clock is off by ${skew} s judges lease expiry on the server's clock`, async (t) => {
    const clock = new FakeClock(skew)
    t.teardown(() => clock.remove())
    const { name } = await freshDatabase(t)
    const holder = addonLock(t, name)
    await holder.doWhileLocked(['warm-up'], () => {})
    const skewed = lockWorker(t, name, clock.env())
    await skewed.ask({ cmd: 'warm' })
    const measured = await skewOf(skewed)
    t.true(Math.abs(measured / 1_000 - skew) < 5, `libfaketime did not skew the clock (${measured} ms)`)

    // A live lease, renewed: not taken over.
    const inside = deferred()
    const letGo = deferred()
    const holding = settled(holder.doWhileLocked(['live'], async () => {
      inside.resolve()
      await letGo.promise
    }, { lease: 1_000, lockTimeout: Infinity }))
    await inside.promise
    const live = await skewed.ask({ cmd: 'take', key: 'live', options: { waitTimeout: 2_500 } })
    letGo.resolve()
    t.false(live.took, `took over a live lease after ${Math.round(live.waitedMs)} ms`)
    t.is(live.error, 'Unable to establish lock.')
    t.is((await holding).error, undefined)

    // A lease nobody renews: taken over once it has passed, not long after.
    const lease = 1_500
    const lockedAt = performance.now()
    await holder.lock(['expiring'], { lease })
    const askedAfter = performance.now() - lockedAt
    const expiring = await skewed.ask({ cmd: 'take', key: 'expiring', options: { waitTimeout: 8_000 } })
    t.true(expiring.took, `never took over the expired lease: ${expiring.error}`)
    const takenAfter = askedAfter + expiring.waitedMs // from before the lock was written
    t.log(`skew ${skew} s: expired lease of ${lease} ms taken over ${Math.round(takenAfter)} ms after it was written`)
    t.true(takenAfter >= lease - 200, `took over ${Math.round(takenAfter)} ms after a ${lease} ms lease was written`)
    t.true(takenAfter <= lease + 2_500, `waited ${Math.round(takenAfter)} ms for a ${lease} ms lease`)
  })
}
