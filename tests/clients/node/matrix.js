// node-postgres through pgwake, for tests/integration/test_client_matrix.py.
//
// Usage: node matrix.js '<json>' with {host, port, user, password, database, servername, ca}
// (ca: a PEM file). Connects with TLS, verifying the certificate against `servername`, which
// is also the SNI host name pgwake routes by. Runs a query, a named prepared statement, a
// committed and a rolled-back transaction, and a cancel of pg_sleep (Client#cancel sends a
// CancelRequest on a new connection); prints one JSON object.
'use strict'

const fs = require('fs')
const { Client } = require('pg')

async function main () {
  const config = JSON.parse(process.argv[2])
  const plain = {
    host: config.host,
    port: config.port,
    user: config.user,
    password: config.password,
    database: config.database
  }
  const client = new Client({
    ...plain,
    ssl: {
      ca: fs.readFileSync(config.ca, 'utf8'),
      servername: config.servername,
      rejectUnauthorized: true
    }
  })
  const out = {}
  await client.connect()
  try {
    out.encrypted = Boolean(client.connection.stream.encrypted)
    out.query = (await client.query('select current_user as u')).rows[0].u

    const prepared = { name: 'plus_one', text: 'select $1::int + 1 as n', values: [41] }
    out.prepared = (await client.query(prepared)).rows[0].n
    out.prepared_again = (await client.query({ ...prepared, values: [1] })).rows[0].n
    out.named_statements = (await client.query(
      "select name from pg_prepared_statements where name = 'plus_one'"
    )).rows.map((row) => row.name)

    await client.query('create table t (x int)')
    await client.query('begin')
    await client.query('insert into t values (1)')
    await client.query('commit')
    await client.query('begin')
    await client.query('insert into t values (2)')
    out.inside = (await client.query('select count(*)::int as n from t')).rows[0].n
    await client.query('rollback')
    out.transaction = (await client.query('select array_agg(x) as xs from t')).rows[0].xs

    // The cancel connection carries only the CancelRequest: plaintext, like libpq's PQcancel.
    const query = client.query('select pg_sleep(30)')
    const started = Date.now()
    const timer = setTimeout(() => new Client(plain).cancel(client, client.activeQuery), 500)
    try {
      await query
      out.cancel = null
    } catch (error) {
      out.cancel = error.code
    } finally {
      clearTimeout(timer)
    }
    out.cancel_ms = Date.now() - started
    out.after_cancel = (await client.query('select 1 as one')).rows[0].one
  } finally {
    await client.end()
  }
  process.stdout.write(JSON.stringify(out) + '\n')
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
