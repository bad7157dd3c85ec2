// Scenario "burst" of tests/tests/interop_js.rs: a stock client writes `chunks` chunks of
// `chunk_chars` characters into the notes, each in its own transaction (so each one is an
// update of its own on the wire), in one synchronous loop, as fast as it can.
//
// node burst.mjs version=1|3 ws=ws://127.0.0.1:PORT/ws room=ID token=T name=N
//   chunks=1024 chunk_chars=1024 deadline_ms=120000
//
// Chunk i is its number in four digits, a colon, then the letter `a + i % 26` up to
// chunk_chars characters. Events: `synced`, then `sent` once the socket has handed every
// update to the network; on the command `leave`, it leaves and sends its `report`.

import { command, connect, deadline, during, emit, finish, leave, settings, snapshot, synced } from './stock.mjs'

const args = settings(['version', 'ws', 'room', 'token', 'name', 'chunks', 'chunk_chars', 'deadline_ms'])
const chunks = Number(args.chunks)
const chunkChars = Number(args.chunk_chars)
const { doc, provider, seen } = await connect(args)
const notes = doc.getText('notes')
const stop = deadline(Number(args.deadline_ms), () =>
  `the notes hold ${notes.length} characters; seen ${JSON.stringify(seen)}`)

/** Chunk `i`, as the header of this file describes it. */
function chunk (i) {
  const head = `${String(i).padStart(4, '0')}:`
  return head + String.fromCharCode(97 + i % 26).repeat(chunkChars - head.length)
}

during('connecting and syncing')
await synced(provider)
emit('synced')

during('writing the burst')
for (let i = 0; i < chunks; i++) {
  doc.transact(() => notes.insert(notes.length, chunk(i)))
}
// Every update is now queued on the socket; wait until it has gone to the network.
const socket = provider.ws
await new Promise((resolve) => {
  const check = () => {
    if (socket.bufferedAmount === 0 || provider.ws !== socket) resolve()
    else setTimeout(check, 10)
  }
  check()
})
emit('sent', { chars: notes.length })

during('waiting for the command to leave')
await command('leave')
const report = { ...snapshot(seen), notes: notes.toString() }
during('leaving')
await leave(provider)
stop()
finish(report)
