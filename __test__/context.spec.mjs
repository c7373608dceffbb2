// The callback runs in the caller's async context: AsyncLocalStorage and the active
// OpenTelemetry span seen where doWhileLocked is called are seen inside it.
import { AsyncLocalStorage } from 'node:async_hooks'
import test from 'ava'
import { context, trace } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { addonLock, deferred, exposedGc, freshDatabase, sleep } from './helpers.mjs'

test('an AsyncLocalStorage store set around the call is visible in the callback, also after waiting', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const storage = new AsyncLocalStorage()
  t.deepEqual(await storage.run({ request: 1 }, () => lock.doWhileLocked(['als'], () => storage.getStore())), { request: 1 })
  const inside = deferred()
  const released = deferred()
  const holding = lock.doWhileLocked(['als'], () => { inside.resolve(); return released.promise })
  await inside.promise
  const queued = [2, 3].map((request) => storage.run({ request }, () => lock.doWhileLocked(['als'], async () => {
    await sleep(5)
    return storage.getStore()
  }, { waitTimeout: 5_000 })))
  await sleep(50)
  released.resolve()
  await holding
  t.deepEqual(await Promise.all(queued), [{ request: 2 }, { request: 3 }])
  t.is(storage.getStore(), undefined)
})

test('the caller\'s store survives garbage collection while the call waits', async (t) => {
  const gc = exposedGc()
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const storage = new AsyncLocalStorage()
  const inside = deferred()
  const released = deferred()
  const holding = lock.doWhileLocked(['gc'], () => { inside.resolve(); return released.promise })
  await inside.promise
  const queued = storage.run({ request: 'queued' }, () => lock.doWhileLocked(['gc'], () => storage.getStore(), { waitTimeout: 5_000 }))
  for (let i = 0; i < 5; i++) {
    gc()
    await sleep(10)
  }
  released.resolve()
  await holding
  t.deepEqual(await queued, { request: 'queued' })
})

test.serial('the active span inside the callback is the call\'s own span', async (t) => {
  const { name } = await freshDatabase(t)
  const manager = new AsyncLocalStorageContextManager().enable()
  context.setGlobalContextManager(manager)
  const exporter = new InMemorySpanExporter()
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }))
  t.teardown(() => { trace.disable(); context.disable() })
  const lock = addonLock(t, name)
  const tracer = trace.getTracer('test')
  const inside = await tracer.startActiveSpan('request', async (request) => {
    const seen = await lock.doWhileLocked(['span'], () => trace.getActiveSpan()?.spanContext())
    request.end()
    return { seen, request: request.spanContext() }
  })
  const call = exporter.getFinishedSpans().find((s) => s.name === 'do-while-resource-locked')
  t.truthy(call)
  t.is(inside.seen.spanId, call.spanContext().spanId)
  t.is(call.parentSpanContext?.spanId ?? call.parentSpanId, inside.request.spanId)
})
