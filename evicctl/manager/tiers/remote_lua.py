"""Server-side scripts of the shared remote tier. Each runs atomically on the node that owns
its keys (one hash slot per script: see remote_keys), so no client ever does a read, a
decision and a write as separate steps.

Two slots take part in a write: the ledger (`{ns:ctl}`) and the object's own. They cannot be
one transaction in a cluster, so a put is reserve (ledger) -> write (object) -> ensure (ledger,
only when the object's token differs from the one reserved). Every ledger row carries the
token of the object it counts; a release names the token it frees, so a release that races
a re-write of the same object cannot un-count the new copy. A reservation whose object never
appeared (a writer that died between the steps) is released by the leader's sweep.

Times are the server's (`TIME`), never a client's clock: leases and reservation ages mean the
same thing to every manager.
"""

from __future__ import annotations

NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: object keys (obj, holders, leases, codecs, fence, gone). Deletes the object now if no
# lease is live, else marks it doomed (no new leases; the last reader or the sweep finishes it).
FINISH = (
    NOW_MS
    + """
local function finish(reason)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms())
  if redis.call('ZCARD', KEYS[3]) > 0 then
    redis.call('HSET', KEYS[1], 'doomed', reason)
    return {'leased', ''}
  end
  local tok = redis.call('HGET', KEYS[1], 'token') or ''
  local codec = redis.call('HGET', KEYS[1], 'codec')
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  if codec then redis.call('SREM', KEYS[4], codec) end
  redis.call('SET', KEYS[6], reason, 'EX', 600)
  return {'deleted', tok}
end
"""
)

# KEYS: capacity, used, tenant_used, quota, ledger, refusals
# ARGV: object key, nbytes, tenant, token, context id, codec, holder
RESERVE = (
    NOW_MS
    + """
local cur = redis.call('HGET', KEYS[5], ARGV[1])
if cur then return {'exists', cjson.decode(cur).tok} end
local n = tonumber(ARGV[2])
local cap = tonumber(redis.call('GET', KEYS[1]) or '0')
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local why, have, limit = nil, used, cap
if used + n > cap then why = 'capacity' end
if not why then
  local q = redis.call('HGET', KEYS[4], ARGV[3])
  if q then
    local tu = tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0')
    if tu + n > tonumber(q) then why, have, limit = 'quota', tu, tonumber(q) end
  end
end
if why then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 'reason', why, 'tenant', ARGV[3],
             'context_id', ARGV[5], 'codec', ARGV[6], 'bytes', n, 'used', have, 'limit', limit,
             'holder', ARGV[7], 'ts_ms', now_ms())
  return {'refused', why, tostring(have), tostring(limit)}
end
redis.call('INCRBY', KEYS[2], n)
redis.call('HINCRBY', KEYS[3], ARGV[3], n)
redis.call('HSET', KEYS[5], ARGV[1],
           cjson.encode({n = n, t = ARGV[3], at = now_ms(), tok = ARGV[4], ctx = ARGV[5], codec = ARGV[6]}))
return {'reserved', ARGV[4]}
"""
)

# Same keys and ARGV as RESERVE, for bytes already written: never refuses; counts the object
# if the ledger lost it, else points its row at the token the object really carries.
ENSURE = (
    NOW_MS
    + """
local cur = redis.call('HGET', KEYS[5], ARGV[1])
local n = tonumber(ARGV[2])
if cur then
  local e = cjson.decode(cur)
  e.tok = ARGV[4]
  redis.call('HSET', KEYS[5], ARGV[1], cjson.encode(e))
  return 'retoken'
end
redis.call('INCRBY', KEYS[2], n)
redis.call('HINCRBY', KEYS[3], ARGV[3], n)
redis.call('HSET', KEYS[5], ARGV[1],
           cjson.encode({n = n, t = ARGV[3], at = now_ms(), tok = ARGV[4], ctx = ARGV[5], codec = ARGV[6]}))
return 'counted'
"""
)

# KEYS: accounting keys; ARGV: object key, token ('' = whatever it is). Returns bytes freed.
RELEASE = """
local cur = redis.call('HGET', KEYS[5], ARGV[1])
if not cur then return 0 end
local e = cjson.decode(cur)
if ARGV[2] ~= '' and e.tok ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('DECRBY', KEYS[2], e.n)
redis.call('HINCRBY', KEYS[3], e.t, -e.n)
return e.n
"""

# KEYS: object keys; ARGV: data, sha256, nbytes, tenant, context id, codec, holder, token
WRITE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HDEL', KEYS[1], 'doomed')  -- wanted again: a pending eviction is called off
  redis.call('SADD', KEYS[2], ARGV[7])
  local held = redis.call('HMGET', KEYS[1], 'token', 'sha256')
  return {'held', held[1] or '', held[2] or ''}
end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'sha256', ARGV[2], 'nbytes', ARGV[3], 'tenant', ARGV[4],
           'context_id', ARGV[5], 'codec', ARGV[6], 'token', ARGV[8])
redis.call('SADD', KEYS[2], ARGV[7])
redis.call('SADD', KEYS[4], ARGV[6])
redis.call('DEL', KEYS[6])
return {'wrote', ARGV[8], ARGV[2]}
"""

# KEYS: object keys; ARGV: holder, force ('1' = the leader's eviction), epoch, reason.
# A holder drops its hold; the object goes when nobody holds it. The leader's eviction ignores
# holders but not leases, and is fenced: an epoch below one already seen here is refused.
DROP = (
    FINISH
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'absent', ''} end
if ARGV[2] == '1' then
  local seen = tonumber(redis.call('GET', KEYS[5]) or '0')
  if tonumber(ARGV[3]) < seen then return {'fenced', tostring(seen)} end
  redis.call('SET', KEYS[5], ARGV[3])
else
  redis.call('SREM', KEYS[2], ARGV[1])
  if redis.call('SCARD', KEYS[2]) > 0 then return {'held', ''} end
end
return finish(ARGV[4])
"""
)

# KEYS: obj, leases; ARGV: lease id, ttl ms. A lease is taken only here: an existence check
# (EXISTS, SISMEMBER) never touches the leases zset, so it never extends one (Mooncake #2187).
LEASE = (
    NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HEXISTS', KEYS[1], 'doomed') == 1 then return false end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]), ARGV[1])
return redis.call('HMGET', KEYS[1], 'sha256', 'nbytes', 'token')
"""
)

# KEYS: object keys; ARGV: lease id. The last reader of a doomed object deletes it.
UNLEASE = (
    FINISH
    + """
redis.call('ZREM', KEYS[3], ARGV[1])
local reason = redis.call('HGET', KEYS[1], 'doomed')
if not reason then return {'kept', ''} end
return finish(reason)
"""
)

# KEYS: obj, holders; ARGV: holder. Re-attach after a restart; nil if the object is gone.
HOLD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HMGET', KEYS[1], 'sha256', 'nbytes')
"""

# KEYS: object keys; ARGV: JSON list of live manager ids. The sweep: holders of managers that
# stopped heartbeating are dropped (a holder id is "<manager>" or "<manager>#<role>"); an
# object nobody holds, or one doomed whose leases ran out, is deleted.
REAP = (
    FINISH
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'absent', ''} end
local live = {}
for _, id in ipairs(cjson.decode(ARGV[1])) do live[id] = true end
for _, h in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local owner = string.match(h, '^([^#]*)')
  if not live[owner] then redis.call('SREM', KEYS[2], h) end
end
local doomed = redis.call('HGET', KEYS[1], 'doomed')
if doomed then return finish(doomed) end
if redis.call('SCARD', KEYS[2]) == 0 then return finish('no live holder') end
return {'kept', ''}
"""
)

# KEYS: leader, epoch; ARGV: manager id, lease ms. Returns the caller's epoch (its fencing
# token) while it leads, 0 when another manager does.
ELECT = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]))
end
if cur then return 0 end
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return e
"""

# KEYS: leader, epoch; ARGV: manager id, epoch. 1 while that epoch still leads.
STILL_LEADS = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
return 0
"""

# KEYS: leader; ARGV: manager id. A leader that stops hands over at once.
RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SCRIPTS = {
    "reserve": RESERVE, "ensure": ENSURE, "release": RELEASE, "write": WRITE, "drop": DROP,
    "lease": LEASE, "unlease": UNLEASE, "hold": HOLD, "reap": REAP, "elect": ELECT,
    "still_leads": STILL_LEADS, "resign": RESIGN,
}  # fmt: skip
