-- kube-free's nginx module (dynamic mode), embedded by kube-free in the include file it owns.
-- Weights, admin states, health and counters live in the shared dict `kube_free`, read on every
-- request (no per-worker copy), so a change is seen by every worker at once.
-- Keys per server K = "<backend>/<server>": w: weight, a: admin, h: health, c: last check,
-- ok:/bad: consecutive check results, l: last check detail, n1..n5/nx: responses by class,
-- ce: connection errors, re: response errors, if: requests in flight.

kube_free = {}
local M = kube_free

local dict = ngx.shared.kube_free
local balancer = require("ngx.balancer")

local MAX_TRIES = 3

M.generation = ""
M.state_file = nil
M.backends = {}
M.by_name = {}

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function words(s)
  local out = {}
  for w in s:gmatch("%S+") do
    out[#out + 1] = w
  end
  return out
end

-- Splits `s` on the literal separator `sep`.
local function split(s, sep)
  local out, from = {}, 1
  while true do
    local i, j = s:find(sep, from, true)
    if not i then
      out[#out + 1] = s:sub(from)
      return out
    end
    out[#out + 1] = s:sub(from, i - 1)
    from = j + 1
  end
end

local function admin_of(k)
  return dict:get("a:" .. k) or "maint"
end

local function eligible_by_admin_and_weight(k)
  return dict:get("a:" .. k) == "ready" and (dict:get("w:" .. k) or 0) > 0
end

-- Weighted random choice among eligible servers of `b`, leaving out those in `exclude` (a set of
-- keys) when given.
local function choose(b, exclude)
  local cands, weights, total = {}, {}, 0
  for _, s in ipairs(b.servers) do
    if not (exclude and exclude[s.key]) then
      local k = s.key
      if dict:get("a:" .. k) == "ready" and dict:get("h:" .. k) == "up" then
        local w = dict:get("w:" .. k) or 0
        if w > 0 then
          cands[#cands + 1] = s
          weights[#weights + 1] = w
          total = total + w
        end
      end
    end
  end
  if total == 0 then
    return nil
  end
  local r = math.random(total)
  for i, s in ipairs(cands) do
    r = r - weights[i]
    if r <= 0 then
      return s
    end
  end
  return cands[#cands]
end

-- One change (already checked) applied to the dict.
local function apply_change(c)
  local k = c.key
  if c.kind == "weight" then
    dict:set("w:" .. k, c.value)
  else
    local before = admin_of(k)
    dict:set("a:" .. k, c.value)
    if c.value == "maint" then
      dict:delete("h:" .. k)
      dict:delete("c:" .. k)
      dict:delete("ok:" .. k)
      dict:delete("bad:" .. k)
      dict:delete("l:" .. k)
    elseif before == "maint" then
      -- Leaving maintenance: starts DOWN, checked at the next tick.
      dict:delete("lock:" .. k)
    end
  end
end

-- Parses an apply body: the list of changes, or nil, "line <n>: <what>".
local function parse_changes(body)
  local changes = {}
  local n = 0
  for _, raw in ipairs(split(body, "\n")) do
    n = n + 1
    local line = trim(raw)
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local f = words(line)
      local kind = f[1]
      if kind ~= "weight" and kind ~= "state" then
        return nil, ("line %d: unknown command %q (weight or state)"):format(n, kind)
      end
      if #f ~= 4 then
        return nil, ("line %d: %s takes 3 words: %s <backend> <server> <value>"):format(n, kind, kind)
      end
      local b = M.by_name[f[2]]
      if not b then
        return nil, ("line %d: unknown backend %q"):format(n, f[2])
      end
      local s = b.by_server[f[3]]
      if not s then
        return nil, ("line %d: unknown server %q in backend %q"):format(n, f[3], f[2])
      end
      local value = f[4]
      if kind == "weight" then
        if not value:match("^%d+$") or tonumber(value) > 100 then
          return nil, ("line %d: bad weight %q (0..100)"):format(n, value)
        end
        value = tonumber(value)
      elseif value ~= "ready" and value ~= "drain" and value ~= "maint" then
        return nil, ("line %d: bad state %q (ready, drain or maint)"):format(n, value)
      end
      changes[#changes + 1] = { kind = kind, key = s.key, value = value }
    end
  end
  return changes
end

local function random_id()
  local t = {}
  for i = 1, 4 do
    t[i] = ("%04x"):format(math.random(0, 0xffff))
  end
  return table.concat(t)
end

-- The admin socket at a fresh start of nginx (not a reload): its directory is made (mode 0700) if
-- it is missing (a tmpfs such as /run is empty after a boot), and a socket file left by an nginx
-- that did not exit cleanly is removed, or nginx could not bind it and would not start. A socket
-- that answers belongs to a running nginx (this is `nginx -t` beside it) and is left alone.
local function prepare_admin_socket(path)
  if not path or path == "" then
    return
  end
  local ffi = require("ffi")
  pcall(ffi.cdef, [[
    struct kube_free_sockaddr_un { unsigned short sun_family; char sun_path[108]; };
    int socket(int domain, int type, int protocol);
    int connect(int fd, const void *addr, unsigned int len);
    int close(int fd);
    int unlink(const char *path);
    int mkdir(const char *path, unsigned int mode);
  ]])
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then
    ffi.C.mkdir(dir, tonumber("700", 8))
  end
  if #path >= 108 then
    return
  end
  local fd = ffi.C.socket(1, 1, 0) -- AF_UNIX, SOCK_STREAM
  if fd < 0 then
    return
  end
  local addr = ffi.new("struct kube_free_sockaddr_un")
  addr.sun_family = 1
  ffi.copy(addr.sun_path, path)
  local rc = ffi.C.connect(fd, addr, ffi.sizeof(addr))
  local errno = ffi.errno()
  ffi.C.close(fd)
  if rc ~= 0 and errno == 111 then -- ECONNREFUSED: nobody listens, the file is stale
    ffi.C.unlink(path)
  end
end

local function seed()
  math.randomseed(math.floor(ngx.now() * 1000) + ngx.worker.pid())
  local f = M.state_file and io.open(M.state_file, "r")
  if f then
    local body = f:read("*a") or ""
    f:close()
    -- Unknown servers and bad lines are skipped one by one.
    for _, line in ipairs(split(body, "\n")) do
      local changes = parse_changes(line)
      if changes then
        for _, c in ipairs(changes) do
          apply_change(c)
        end
      end
    end
  end
  -- What served before the restart serves again at once (as HAProxy restores its servers' state);
  -- the first checks correct it within `fall` intervals. Other servers start DOWN.
  for _, b in ipairs(M.backends) do
    for _, s in ipairs(b.servers) do
      if eligible_by_admin_and_weight(s.key) then
        dict:set("h:" .. s.key, "up")
        dict:set("c:" .. s.key, "passed")
        dict:set("l:" .. s.key, "restored")
      end
    end
  end
  dict:set("boot", random_id())
  dict:set("seeded", true)
end

function M.configure(cfg)
  M.generation = cfg.generation
  M.state_file = cfg.state_file
  M.backends = {}
  M.by_name = {}
  M.by_addr = {}
  for _, bc in ipairs(cfg.backends) do
    local b = { name = bc.name, check = bc.check, servers = {}, by_server = {}, by_addr = {} }
    for _, sc in ipairs(bc.servers) do
      local s = {
        backend = bc.name,
        name = sc.name,
        host = sc.host,
        ip = sc.host:gsub("^%[(.*)%]$", "%1"),
        port = sc.port,
        key = bc.name .. "/" .. sc.name,
        check = bc.check,
      }
      s.addr = sc.host .. ":" .. sc.port
      b.servers[#b.servers + 1] = s
      b.by_server[s.name] = s
      b.by_addr[s.addr] = b.by_addr[s.addr] or s
      M.by_addr[s.addr] = M.by_addr[s.addr] or s
    end
    M.backends[#M.backends + 1] = b
    M.by_name[b.name] = b
  end
  if not dict:get("seeded") then
    prepare_admin_socket(cfg.admin_socket)
    seed()
  end
end

-- Access phase: no eligible server → 503 here, never a fall-through to the placeholder peer.
function M.access(backend)
  local b = M.by_name[backend]
  local pick = b and choose(b, nil)
  -- An apply writes a batch key by key: a request that arrives between two of them may find no
  -- server eligible for a moment. Look again before answering 503.
  for _ = 1, 3 do
    if pick or not b then
      break
    end
    ngx.sleep(0.002)
    pick = choose(b, nil)
  end
  if not pick then
    return ngx.exit(503)
  end
  local ctx = ngx.ctx
  ctx.kf_backend = backend
  ctx.kf_pick = pick
end

-- Balancer phase, once per attempt.
function M.balance(backend)
  local b = M.by_name[backend]
  local ctx = ngx.ctx
  local tried = ctx.kf_tried
  local pick
  if not tried then
    tried = {}
    ctx.kf_tried = tried
    pick = choose(b, nil) or ctx.kf_pick
    if not pick then
      error("kube-free: no eligible server in " .. backend)
    end
    local _, err = balancer.set_more_tries(MAX_TRIES - 1)
    if err and err ~= "reduced tries due to limit" then
      ngx.log(ngx.WARN, "kube-free: set_more_tries: ", err)
    end
  else
    local prev = tried[#tried]
    dict:incr("if:" .. prev.key, -1, 0)
    local seen = {}
    for _, s in ipairs(tried) do
      seen[s.key] = true
    end
    pick = choose(b, seen) or choose(b, nil) or prev
  end
  local ok, err = balancer.set_current_peer(pick.ip, pick.port)
  if not ok then
    error("kube-free: set_current_peer: " .. tostring(err))
  end
  tried[#tried + 1] = pick
  dict:incr("if:" .. pick.key, 1, 0)
end

local function server_of(addr)
  local ctx = ngx.ctx
  local b = ctx.kf_backend and M.by_name[ctx.kf_backend]
  return (b and b.by_addr[addr]) or M.by_addr[addr]
end

-- Log phase: in-flight back first, then one outcome per attempt from nginx's own variables
-- (", " between attempts, " : " between passes of an internal redirect).
function M.log()
  local var = ngx.var
  local addrs = var.upstream_addr
  if not addrs or addrs == "" then
    return
  end
  local passes = split(addrs, " : ")
  -- Each pass left one attempt in flight: its last one.
  for _, pass in ipairs(passes) do
    local a = split(pass, ", ")
    local s = server_of(a[#a])
    if s then
      dict:incr("if:" .. s.key, -1, 0)
    end
  end
  -- A client that gave up (499) is not the server's fault: its last attempt is not counted.
  local aborted = var.status == "499"
  local statuses = split(var.upstream_status or "", " : ")
  local connects = split(var.upstream_connect_time or "", " : ")
  local headers = split(var.upstream_header_time or "", " : ")
  for p, pass in ipairs(passes) do
    local a = split(pass, ", ")
    local st = split(statuses[p] or "", ", ")
    local ct = split(connects[p] or "", ", ")
    local ht = split(headers[p] or "", ", ")
    for i, addr in ipairs(a) do
      local s = server_of(addr)
      if s and not (aborted and p == #passes and i == #a) then
        local k = s.key
        local status = tonumber(st[i] or "")
        if ct[i] == nil or ct[i] == "-" then
          dict:incr("ce:" .. k, 1, 0)
        elseif ht[i] == nil or ht[i] == "-" then
          dict:incr("re:" .. k, 1, 0)
        elseif status and status >= 100 and status < 600 then
          dict:incr("n" .. math.floor(status / 100) .. ":" .. k, 1, 0)
        else
          dict:incr("nx:" .. k, 1, 0)
        end
      end
    end
  end
end

-- Health checks ---------------------------------------------------------------------------

local function record(s, passed, detail)
  local k = s.key
  if admin_of(k) == "maint" then
    return -- went to maintenance while the check ran: the result no longer applies
  end
  dict:set("l:" .. k, detail)
  if passed then
    local ok = dict:incr("ok:" .. k, 1, 0)
    dict:set("bad:" .. k, 0)
    dict:set("c:" .. k, "passed")
    if ok >= s.check.rise then
      dict:set("h:" .. k, "up")
    end
  else
    local bad = dict:incr("bad:" .. k, 1, 0)
    dict:set("ok:" .. k, 0)
    dict:set("c:" .. k, "failed")
    if bad >= s.check.fall then
      dict:set("h:" .. k, "down")
    end
  end
end

local function probe(premature, s)
  if premature then
    return
  end
  local check = s.check
  local sock = ngx.socket.tcp()
  sock:settimeout(math.max(1, math.floor(check.timeout * 1000)))
  local ok, err = sock:connect(s.ip, s.port)
  if not ok then
    return record(s, false, "L4 " .. tostring(err))
  end
  ok, err = sock:send(("GET %s HTTP/1.0\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"):format(
    check.path, s.host, s.port))
  if not ok then
    sock:close()
    return record(s, false, "L4 send: " .. tostring(err))
  end
  local line
  line, err = sock:receive("*l")
  sock:close()
  if not line then
    return record(s, false, "L7 " .. tostring(err))
  end
  local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then
    return record(s, false, "L7 bad status line")
  end
  record(s, status >= 200 and status < 300, "L7 " .. status)
end

local function tick(premature)
  if premature then
    return
  end
  for _, b in ipairs(M.backends) do
    for _, s in ipairs(b.servers) do
      -- One check of a server at a time: the lock lasts the interval, or the timeout when longer.
      local hold = math.max(b.check.interval, b.check.timeout)
      if admin_of(s.key) ~= "maint" and dict:add("lock:" .. s.key, true, hold) then
        local ok, err = ngx.timer.at(0, probe, s)
        if not ok then
          dict:delete("lock:" .. s.key)
          ngx.log(ngx.WARN, "kube-free: cannot start a check: ", err)
        end
      end
    end
  end
end

function M.init_worker()
  math.randomseed(math.floor(ngx.now() * 1000) + ngx.worker.pid())
  local ok, err = ngx.timer.every(0.1, tick)
  if not ok then
    ngx.log(ngx.ERR, "kube-free: cannot start the health checks: ", err)
  end
end

-- Admin endpoint ----------------------------------------------------------------------------

local function servers_text()
  local out = { "generation " .. M.generation, "boot " .. tostring(dict:get("boot") or "") }
  for _, b in ipairs(M.backends) do
    for _, s in ipairs(b.servers) do
      local k = s.key
      local admin = admin_of(k)
      local up = dict:get("h:" .. k) == "up"
      local bad = dict:get("bad:" .. k) or 0
      local label
      if admin == "maint" then
        label = "MAINT"
      else
        label = up and "UP" or "DOWN"
        if up and bad > 0 then
          label = ("UP %d/%d"):format(bad, b.check.fall)
        end
        if admin == "drain" then
          label = label .. " DRAIN"
        end
        local detail = dict:get("l:" .. k)
        if detail then
          label = label .. " (" .. detail .. ")"
        end
      end
      local function n(prefix)
        return tostring(dict:get(prefix .. k) or 0)
      end
      out[#out + 1] = table.concat({
        "server", b.name, s.name, admin, n("w:"), up and "up" or "down",
        dict:get("c:" .. k) or "none", n("if:"),
        n("n1:"), n("n2:"), n("n3:"), n("n4:"), n("n5:"), n("nx:"), n("ce:"), n("re:"),
        label,
      }, " ")
    end
  end
  return table.concat(out, "\n") .. "\n"
end

local function answer(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "text/plain"
  ngx.print(body)
end

function M.admin()
  local method, uri = ngx.req.get_method(), ngx.var.uri
  if method == "GET" and uri == "/kube-free/servers" then
    return answer(200, servers_text())
  end
  if method == "POST" and uri == "/kube-free/apply" then
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body then
      local file = ngx.req.get_body_file()
      local f = file and io.open(file, "r")
      body = f and f:read("*a") or ""
      if f then
        f:close()
      end
    end
    local changes, err = parse_changes(body)
    if not changes then
      return answer(400, "error: " .. err .. "\n")
    end
    for _, c in ipairs(changes) do
      apply_change(c)
    end
    return answer(200, servers_text())
  end
  return answer(404, "not found\n")
end
