// A stock Yjs client (yjs + y-websocket's WebsocketProvider) for the Rust e2e test
// `tests/tests/interop_js.rs`. It joins a room, types into the shared notes, waits until the
// notes hold the text another peer typed, prints the final notes as one JSON line and exits.
//
// Usage:
//   node interop.mjs WS_BASE ROOM TOKEN NAME TEXT EXPECTED
// or the same values from the environment:
//   INTEROP_WS_BASE INTEROP_ROOM INTEROP_TOKEN INTEROP_NAME INTEROP_TEXT INTEROP_EXPECTED
//
// WS_BASE is `ws://127.0.0.1:PORT/ws`; the provider appends `/ROOM?token=…&name=…`.
// Exit code 0 on success, 1 with a message on stderr on any failure or after the deadline.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const DEADLINE_MS = Number(process.env.INTEROP_DEADLINE_MS || 10_000)

function fail (message) {
  process.stderr.write(`interop.mjs: ${message}\n`)
  process.exit(1)
}

const names = ['WS_BASE', 'ROOM', 'TOKEN', 'NAME', 'TEXT', 'EXPECTED']
const args = {}
names.forEach((key, i) => {
  const value = process.argv[2 + i] ?? process.env[`INTEROP_${key}`]
  if (value === undefined || value === '') {
    fail(`missing ${key}: pass it as argument ${i + 1} or as INTEROP_${key}\n` +
      `usage: node interop.mjs ${names.join(' ')}`)
  }
  args[key] = value
})

const deadline = setTimeout(() => {
  const notes = doc.getText('notes').toString()
  fail(`deadline of ${DEADLINE_MS} ms passed while ${stage}; ` +
    `notes are ${JSON.stringify(notes)}, expected them to contain ${JSON.stringify(args.EXPECTED)}`)
}, DEADLINE_MS)

let stage = 'connecting and syncing'
const doc = new Y.Doc()
const provider = new WebsocketProvider(args.WS_BASE, args.ROOM, doc, {
  params: { token: args.TOKEN, name: args.NAME },
  WebSocketPolyfill: WebSocket,
  disableBc: true
})
provider.awareness.setLocalStateField('user', { name: args.NAME })

provider.on('connection-error', (event) => {
  process.stderr.write(`interop.mjs: connection error: ${event?.message ?? event?.type ?? event}\n`)
})
provider.on('connection-close', (event) => {
  if (stage !== 'closing') {
    process.stderr.write(`interop.mjs: connection closed while ${stage}: ` +
      `code ${event?.code} ${JSON.stringify(event?.reason ?? '')}\n`)
  }
})

function until (condition, events) {
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

const notes = doc.getText('notes')

await until(() => provider.synced, [[provider, 'sync']])

stage = 'waiting for the other peer\'s text'
notes.insert(notes.length, args.TEXT)

await until(() => notes.toString().includes(args.EXPECTED), [[doc, 'update']])

const final = notes.toString()
process.stdout.write(JSON.stringify({ notes: final }) + '\n')

// Leave without announcing our awareness removal over the socket: the server must drop the
// state itself when the connection ends. Wait for the close handshake so that everything sent
// before it has reached the server.
stage = 'closing'
const socket = provider.ws
const closed = socket === null || socket.readyState === WebSocket.CLOSED
  ? Promise.resolve()
  : new Promise((resolve) => socket.once('close', resolve))
provider.destroy()
await closed
clearTimeout(deadline)
process.exit(0)
