// A TCP proxy process in front of the server (fixtures/tcp-proxy.mjs): freezing it with
// SIGSTOP cuts off only the clients that connect through it (with directConnection=true,
// or the driver would follow the server's advertised address around the proxy).
import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'tcp-proxy.mjs')

export async function startProxy (targetPort) {
  const child = spawn(process.execPath, [fixture, String(targetPort)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const port = await new Promise((resolve, reject) => {
    let text = ''
    const timer = setTimeout(() => reject(new Error('the proxy did not start within 10 s')), 10_000)
    child.stdout.on('data', (chunk) => {
      text += chunk
      const match = /listening (\d+)/.exec(text)
      if (match) { clearTimeout(timer); resolve(Number(match[1])) }
    })
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`the proxy exited (${code})`)) })
  })
  let frozen = false
  const lateReplies = []
  const armed = []
  child.stdout.on('data', (chunk) => {
    for (const outcome of ['late reply', 'nothing held']) {
      if (String(chunk).includes(outcome)) lateReplies.splice(0).forEach((resolve) => resolve(outcome))
    }
    if (String(chunk).includes('holding')) armed.splice(0).forEach((resolve) => resolve())
  })
  child.stdin.on('error', () => {}) // a proxy stopped before the test's last command
  return {
    port,
    child,
    freeze () { frozen = true; child.kill('SIGSTOP') },
    thaw () { frozen = false; child.kill('SIGCONT') },
    /**
     * The next request that contains all `words` is held back and its connection cut;
     * resolves once the proxy is armed.
     */
    holdNext (...words) {
      const ready = new Promise((resolve) => armed.push(resolve))
      child.stdin.write(`hold ${words.join(',')}\n`)
      return ready
    },
    /**
     * The request held back goes on to the server; resolves with 'late reply' once it
     * has answered, or 'nothing held'.
     */
    deliverLate () {
      const answered = new Promise((resolve) => lateReplies.push(resolve))
      child.stdin.write('deliver\n')
      return answered
    },
    get frozen () { return frozen },
    async stop () {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGCONT')
      child.kill('SIGKILL')
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 2_000))])
    }
  }
}

/** `url` (mongodb://127.0.0.1:PORT/...) rewritten to go through `proxyPort`, directly. */
export function throughProxy (url, proxyPort) {
  const parsed = new URL(url)
  parsed.host = `127.0.0.1:${proxyPort}`
  if (!parsed.pathname) parsed.pathname = '/'
  parsed.searchParams.set('directConnection', 'true')
  return parsed.toString()
}
