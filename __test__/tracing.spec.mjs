// OpenTelemetry spans, checked with the SDK's in-memory exporter.
import { createRequire } from 'node:module'
import test from 'ava'
import { trace } from '@opentelemetry/api'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { addonLock, freshDatabase } from './helpers.mjs'

const require = createRequire(import.meta.url)
const exporter = new InMemorySpanExporter()
trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }))

test.serial('lock, unlock and doWhileLocked record the original\'s spans, attributes and events', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  exporter.reset()
  await lock.lock(['traced', 1])
  await lock.unlock(['traced', 1])
  await lock.doWhileLocked(['traced'], () => 'done', { lockTimeout: 1_000, waitTimeout: 2_000 })
  const spans = exporter.getFinishedSpans()
  t.deepEqual(spans.map((s) => s.name), ['lock-resource', 'unlock-resource', 'do-while-resource-locked'])
  t.deepEqual(spans[0].attributes.resourceIds, ['traced', '1'], 'mixed ids are recorded as strings')
  const hold = spans[2]
  t.is(hold.attributes.lockTimeout, 1_000)
  t.is(hold.attributes.waitTimeout, 2_000)
  t.is(hold.attributes.retryInterval, 125)
  t.deepEqual(hold.events.map((e) => e.name), ['lock acquired', 'lock released'])
  t.is(typeof hold.events[0].attributes.waited_ms, 'number')
})

test.serial('a failed call ends its span with an error status and the exception', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  exporter.reset()
  await t.throwsAsync(lock.unlock(['missing']))
  const [span] = exporter.getFinishedSpans()
  t.is(span.name, 'unlock-resource')
  t.is(span.status.code, 2) // SpanStatusCode.ERROR
  t.regex(span.status.message, /Was not able to delete/)
  t.is(span.events[0].name, 'exception')
})

test('without @opentelemetry/api the native class is used as it is', (t) => {
  const { traced } = require('../tracing.js')
  const { ResourceLock: Native } = require('../binding.js')
  t.is(traced(Native, null), Native)
})
