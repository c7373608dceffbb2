// The downstream store of the fault-injection suite: one counter that holders update by
// read-modify-write (read n, later write n + 1), so two holders at once lose an update.
// Every access (read and write) carries the holder's fencing token and is refused when a
// higher one has been seen: fencing, checked at first contact, so that a holder paused
// between its read and its write cannot overwrite the count of the holder that took
// over. Accesses without a token (the original class has none) bypass the check and
// never lower the highest token. `accepted` counts the writes it took, in the same
// update as `n`, so that n === accepted unless an update was lost.
export const STORE_ID = 'store'

/**
 * A token as a 40-digit decimal string (tokens have up to 80 bits): strings compare exactly, in the order of the
 * numbers, on every server (a test server may compare 64-bit integers as doubles, which
 * cannot tell apart two oplog timestamps of the same second above 2^53).
 */
export const tokenKey = (token) => token.toString().padStart(40, '0')

export async function createStore (collection) {
  await collection.insertOne({ _id: STORE_ID, n: 0, accepted: 0, refused: 0, maxToken: tokenKey(0n) })
}

export async function readStore (collection) {
  const doc = await collection.findOne({ _id: STORE_ID })
  return { n: doc.n, accepted: doc.accepted, refused: doc.refused, maxToken: doc.maxToken }
}

export class FencedCounter {
  constructor (collection) {
    this.collection = collection
  }

  /** Reads n; `token` (a bigint, or null) becomes the highest seen. Null when refused. */
  async read (token) {
    if (token !== null) {
      // Two steps, not one findOneAndUpdate: SecantusDB 0.7 (Python) can return a stale
      // document from findOneAndUpdate while another update of it is in flight.
      const seen = tokenKey(token)
      const fenced = await this.collection.updateOne({ _id: STORE_ID, maxToken: { $lte: seen } }, { $set: { maxToken: seen } })
      if (fenced.matchedCount !== 1) {
        await this.collection.updateOne({ _id: STORE_ID }, { $inc: { refused: 1 } })
        return null
      }
    }
    return (await this.collection.findOne({ _id: STORE_ID })).n
  }

  /** Writes `n`; `token` is a bigint or null. Resolves true when accepted, false when refused. */
  async write (n, token) {
    const filter = token === null
      ? { _id: STORE_ID }
      : { _id: STORE_ID, maxToken: { $lte: tokenKey(token) } }
    const set = token === null ? { n } : { n, maxToken: tokenKey(token) }
    const result = await this.collection.updateOne(filter, { $set: set, $inc: { accepted: 1 } })
    if (result.matchedCount === 1) return true
    await this.collection.updateOne({ _id: STORE_ID }, { $inc: { refused: 1 } })
    return false
  }
}
