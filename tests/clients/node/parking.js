// A node-postgres Pool keeping idle clients open across a suspend, for
// tests/integration/test_parking_clients.py.
//
// Usage: node parking.js '<json>' with {host, port, user, password, database, options, size}.
// Checks out `size` clients at once, gives each its own settings and a named prepared
// statement, returns them to the pool and prints one JSON line ({before: [...]}). Then waits
// for a line on stdin, checks out `size` clients again (the pool's idle ones), reports each
// one's state before executing the named statement once more, and prints {after: [...]}.
// Any failure is an exception: a stack trace and a non-zero exit.
'use strict'

const readline = require('readline')
const { Pool } = require('pg')

const STATE = `select pg_backend_pid() as pid,
  current_setting('application_name') as application_name,
  current_setting('TimeZone') as timezone, current_setting('search_path') as search_path,
  (select array_agg(name::text order by name) from pg_prepared_statements) as statements`

function plusOne (n) {
  return { name: 'plus_one', text: 'select $1::int + 1 as n', values: [n] }
}

async function onEach (pool, size, work) {
  const clients = await Promise.all(Array.from({ length: size }, () => pool.connect()))
  try {
    return await Promise.all(clients.map(work))
  } finally {
    clients.forEach((client) => client.release())
  }
}

async function main () {
  const config = JSON.parse(process.argv[2])
  // idleTimeoutMillis 0: idle clients stay open, as long as the test waits.
  const pool = new Pool({ ...config, max: config.size, idleTimeoutMillis: 0 })
  pool.on('error', (error) => {
    console.error(error)
    process.exitCode = 1
  })
  const before = await onEach(pool, config.size, async (client, i) => {
    await client.query(`set application_name = 'node-${i}'`)
    await client.query("set TimeZone = 'America/Sao_Paulo'")
    await client.query('set search_path = node, public')
    const n = (await client.query(plusOne(i))).rows[0].n
    return { ...(await client.query(STATE)).rows[0], n }
  })
  console.log(JSON.stringify({ before }))

  const lines = readline.createInterface({ input: process.stdin })
  await new Promise((resolve) => lines.once('line', resolve))
  lines.close()

  const after = await onEach(pool, config.size, async (client) => {
    const state = (await client.query(STATE)).rows[0]
    const n = (await client.query(plusOne(41))).rows[0].n
    return { ...state, n }
  })
  console.log(JSON.stringify({ after }))
  await pool.end()
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
