// What the scenario scripts share: the stock provider of the y-websocket version asked for,
// a count of what its user would see (sockets opened, status changes, closes and their codes),
// and the conversation with the Rust test that runs the script.
//
// A script takes its settings as `key=value` arguments. It reports on stdout, one JSON object
// per line, each with an `event` field; the last one of a script that succeeds is its
// `report`, which counts what happened up to the moment the script decided to leave. It takes
// commands on stdin, one word per line. On any failure it writes the reason on stderr and
// exits with code 1.

import * as readline from 'node:readline'
import * as Y from 'yjs'
import WebSocket from 'ws'

// The pinned stock clients, by the version the tests name them with (see package.json).
const PACKAGES = { 1: 'y-websocket', 3: 'y-websocket-v3' }

let stage = 'starting'

/** Names what the script is doing, for the message of a failure or a missed deadline. */
export function during (what) {
  stage = what
}

/** Reports the failure on stderr and exits with code 1. */
export function fail (message) {
  process.stderr.write(`${process.argv[1]}: ${message} (while ${stage})\n`)
  process.exit(1)
}

/** Writes one JSON line `{event, ...fields}` on stdout. */
export function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n')
}

/**
 * The `key=value` arguments as an object, with every key of `required` present and non-empty.
 * Fails with a usage line otherwise.
 */
export function settings (required) {
  const args = {}
  for (const arg of process.argv.slice(2)) {
    const at = arg.indexOf('=')
    if (at <= 0) fail(`argument ${JSON.stringify(arg)} is not key=value`)
    args[arg.slice(0, at)] = arg.slice(at + 1)
  }
  const missing = required.filter((key) => !args[key])
  if (missing.length > 0) {
    fail(`missing ${missing.join(', ')}; usage: node ${process.argv[1]} ` +
      required.map((key) => `${key}=…`).join(' '))
  }
  if (!(args.version in PACKAGES)) {
    fail(`version must be one of ${Object.keys(PACKAGES).join(', ')}, not ${JSON.stringify(args.version)}`)
  }
  return args
}

/** Fails the script once `ms` milliseconds have passed; `describe` adds the state to the message. */
export function deadline (ms, describe = () => '') {
  const timer = setTimeout(() => fail(`deadline of ${ms} ms passed; ${describe()}`), ms)
  return () => clearTimeout(timer)
}

// Commands from stdin, waited for by name.
const received = []
const waiting = []
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const command = line.trim()
  const at = waiting.findIndex((w) => w.command === command)
  if (at >= 0) {
    waiting.splice(at, 1)[0].resolve()
  } else {
    received.push(command)
  }
})

/** Writes the final `report` line and exits with code 0 once it is out. */
export function finish (report) {
  process.stdout.write(JSON.stringify({ event: 'report', ...report }) + '\n', () => process.exit(0))
}

/** Resolves when the Rust test sends the line `command`. */
export function command (name) {
  const at = received.indexOf(name)
  if (at >= 0) {
    received.splice(at, 1)
    return Promise.resolve()
  }
  return new Promise((resolve) => waiting.push({ command: name, resolve }))
}

/** Resolves once `condition()` holds, checking it again on each of `events` (`[target, name]`). */
export function until (condition, events) {
  return new Promise((resolve) => {
    if (condition()) return resolve()
    const check = () => {
      if (condition()) {
        events.forEach(([target, name]) => target.off(name, check))
        resolve()
      }
    }
    events.forEach(([target, name]) => target.on(name, check))
  })
}

/**
 * Connects a stock client of `version` (1 or 3) to `wsBase/room?token&name`, with a fresh
 * document and the user's name in its awareness state, and returns `{ doc, provider, seen }`.
 * `seen` counts what happened to the connection, in the shape of the final report.
 */
export async function connect ({ version, ws, room, token, name }) {
  const { WebsocketProvider } = await import(PACKAGES[version])
  const seen = {
    version: Number(version),
    // WebSockets the provider created, and how many of them opened.
    sockets: 0,
    opens: 0,
    // Messages received on any of them.
    messages: 0,
    // The provider's `status` events, in order.
    statuses: [],
    // Every closed connection: the code and reason the server sent, or `local: true` when the
    // provider closed it itself (its "no message for 30 s" check, or `disconnect()`).
    closes: [],
    // y-websocket 3's `closed` events: the server said not to reconnect, and it obeyed.
    terminal: [],
    errors: 0
  }
  // The provider creates its sockets through this class, so each one is counted.
  class CountedWebSocket extends WebSocket {
    constructor (...args) {
      super(...args)
      seen.sockets++
      this.on('open', () => { seen.opens++ })
      this.on('message', () => { seen.messages++ })
    }
  }
  const doc = new Y.Doc()
  // Connected only once every listener is in place, so that the first `connecting` counts.
  const provider = new WebsocketProvider(ws, room, doc, {
    params: { token, name },
    WebSocketPolyfill: CountedWebSocket,
    disableBc: true,
    connect: false
  })
  provider.awareness.setLocalStateField('user', { name })
  provider.on('status', ({ status }) => seen.statuses.push(status))
  // Each close is also told on stderr, which the Rust test quotes when it fails.
  provider.on('connection-close', (event) => {
    const close = event ? { code: event.code, reason: event.reason ?? '' } : { local: true }
    seen.closes.push(close)
    process.stderr.write(`connection closed while ${stage}: ${JSON.stringify(close)}\n`)
  })
  provider.on('connection-error', () => { seen.errors++ })
  provider.on('closed', ({ code, reason }) => {
    seen.terminal.push({ code, reason })
    process.stderr.write(`gave up reconnecting after close code ${code}\n`)
  })
  provider.connect()
  return { doc, provider, seen }
}

/** A copy of `seen` as it is now, before leaving adds its own close to it. */
export function snapshot (seen) {
  return JSON.parse(JSON.stringify(seen))
}

/** Resolves once the provider is connected and has applied the server's sync step 2. */
export function synced (provider) {
  return until(() => provider.wsconnected && provider.synced, [[provider, 'sync'], [provider, 'status']])
}

/**
 * Closes the provider and waits for the close handshake, so that everything it sent before,
 * including its own goodbye, has reached the server.
 */
export async function leave (provider) {
  const socket = provider.ws
  const closed = socket === null || socket.readyState === WebSocket.CLOSED
    ? Promise.resolve()
    : new Promise((resolve) => socket.once('close', resolve))
  provider.destroy()
  await closed
}
