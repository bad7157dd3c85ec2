// Scenario "slow" of tests/tests/interop_js.rs: a stock client stops reading its socket (as
// a reader on a congested link would) while another peer writes a lot, then reads again. The
// server closes it as too slow; the stock client must reconnect by itself and end up with the
// same notes as the writer.
//
// node slow.mjs version=1|3 ws=ws://127.0.0.1:PORT/ws room=ID token=T name=N
//   expected_chars=N deadline_ms=120000
//
// Events: `synced`; `paused` after the command `pause`; `resumed` after the command `resume`;
// then, once the provider is connected and synced again and the notes hold expected_chars
// characters, `report` (with the notes), and it leaves.

import { command, connect, deadline, during, emit, finish, leave, settings, snapshot, synced, until } from './stock.mjs'

const args = settings(['version', 'ws', 'room', 'token', 'name', 'expected_chars', 'deadline_ms'])
const expected = Number(args.expected_chars)
const { doc, provider, seen } = await connect(args)
const notes = doc.getText('notes')
const stop = deadline(Number(args.deadline_ms), () =>
  `the notes hold ${notes.length} of ${expected} characters; connected: ${provider.wsconnected}, ` +
  `synced: ${provider.synced}; seen ${JSON.stringify(seen)}`)

during('connecting and syncing')
await synced(provider)
emit('synced')

during('waiting for the command to pause')
await command('pause')
// The `ws` socket stops reading from TCP: the server's writes pile up in the kernel's buffers
// until they block.
const first = provider.ws
first.pause()
emit('paused')

during('paused, waiting for the command to resume')
await command('resume')
first.resume()
emit('resumed')

during('catching up')
// y-websocket 3 gives up after a close code it takes as final: then it will never catch up.
provider.on('closed', ({ code, reason }) => {
  fail(`the provider gave up reconnecting after close code ${code} ${JSON.stringify(reason)}`)
})
await until(
  () => provider.wsconnected && provider.synced && notes.length >= expected,
  [[doc, 'update'], [provider, 'sync'], [provider, 'status']]
)
const report = { ...snapshot(seen), notes: notes.toString() }

during('leaving')
await leave(provider)
stop()
finish(report)
