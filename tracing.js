'use strict'
// OpenTelemetry spans with the original's names and attributes, added only where the
// application has @opentelemetry/api; elsewhere the native class is used untouched,
// so tracing costs nothing.

const SPAN_NAMES = {
  lock: 'lock-resource',
  unlock: 'unlock-resource',
  doWhileLocked: 'do-while-resource-locked'
}

function loadApi () {
  try {
    return require('@opentelemetry/api')
  } catch {
    return null
  }
}

/**
 * Attribute values OpenTelemetry accepts: primitives and arrays of one primitive type.
 * Mixed id arrays (`['invoice', 42]`) are recorded as strings rather than dropped.
 * Longer arrays than `MAX_RECORDED_IDS` are not recorded: a sparse array may claim
 * billions of elements, and walking them would hold up the event loop before the
 * call could reject it.
 */
const MAX_RECORDED_IDS = 1_000

function attribute (value) {
  const primitive = (v) => ['string', 'number', 'boolean'].includes(typeof v)
  if (primitive(value)) return value
  if (!Array.isArray(value) || value.length > MAX_RECORDED_IDS || !value.every(primitive)) return undefined
  return value.every((v) => typeof v === typeof value[0]) ? value : value.map(String)
}

function attributes (entries) {
  const result = {}
  for (const [key, value] of Object.entries(entries)) {
    const valid = attribute(value)
    if (valid !== undefined) result[key] = valid
  }
  return result
}

function traced (NativeResourceLock, api = loadApi()) {
  if (!api) return NativeResourceLock
  const tracer = api.trace.getTracer('mongodb-resource-lock')

  function inSpan (name, spanAttributes, fn) {
    return tracer.startActiveSpan(name, { attributes: attributes(spanAttributes) }, async (span) => {
      try {
        return await fn(span)
      } catch (error) {
        if (error instanceof Error) span.recordException(error)
        span.setStatus({ code: api.SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) })
        throw error
      } finally {
        span.end()
      }
    })
  }

  return class ResourceLock extends NativeResourceLock {
    lock (resourceIds, options) {
      return inSpan(SPAN_NAMES.lock, { resourceIds }, () => super.lock(resourceIds, options))
    }

    unlock (resourceIds) {
      return inSpan(SPAN_NAMES.unlock, { resourceIds }, () => super.unlock(resourceIds))
    }

    doWhileLocked (resourceIds, callback, options) {
      const { lockTimeout = 5_000, waitTimeout = 5_000, retryInterval = 125, lease } = (options && typeof options === 'object') ? options : {}
      return inSpan(SPAN_NAMES.doWhileLocked, { resourceIds, lockTimeout, waitTimeout, retryInterval, lease }, async (span) => {
        const asked = Date.now()
        const held = typeof callback === 'function'
          ? (context) => {
              span.addEvent('lock acquired', { waited_ms: Date.now() - asked, fencing_token: String(context.fencingToken) })
              return callback(context)
            }
          : callback
        try {
          return await super.doWhileLocked(resourceIds, held, options)
        } finally {
          span.addEvent('lock released')
        }
      })
    }
  }
}

module.exports = { traced, SPAN_NAMES }
