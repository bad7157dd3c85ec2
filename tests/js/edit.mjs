// Scenario "edit" of tests/tests/interop_js.rs: a stock client joins a room, types into the
// shared notes, waits until the notes hold the text another peer typed, reports the final
// notes and leaves.
//
// node edit.mjs version=1|3 ws=ws://127.0.0.1:PORT/ws room=ID token=T name=N text=T expected=T
//   [deadline_ms=10000]

import { connect, deadline, during, finish, leave, settings, snapshot, synced, until } from './stock.mjs'

const args = settings(['version', 'ws', 'room', 'token', 'name', 'text', 'expected'])
const { doc, provider, seen } = await connect(args)
const notes = doc.getText('notes')
const stop = deadline(Number(args.deadline_ms || 10_000), () =>
  `notes are ${JSON.stringify(notes.toString())}, expected them to contain ` +
  `${JSON.stringify(args.expected)}; seen ${JSON.stringify(seen)}`)

during('connecting and syncing')
await synced(provider)

during('waiting for the other peer\'s text')
notes.insert(notes.length, args.text)
await until(() => notes.toString().includes(args.expected), [[doc, 'update']])

const report = { ...snapshot(seen), notes: notes.toString() }

during('leaving')
await leave(provider)
stop()
finish(report)
