package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"

	"wsgateway/store"
)

// The job queue shared by the replicas. Keys (after the prefix):
//
//	jobnum      the last job number handed out
//	jobqueue    list of the queued job ids, next to start first
//	jobsvc      hash queued job id -> its service
//	jobrun      hash starting or running job id -> the replica running it
//	jobrunsvc   hash service -> how many of its jobs start or run
//
// Each operation is one Lua script, so two replicas never claim the same
// job, never run more of a service's jobs than its limit between them,
// and a dead replica's jobs are interrupted once. The job records
// (job:<id>, JSON) are read and written by the scripts with cjson.
const (
	keyJobNum    = "jobnum"
	keyJobList   = "jobqueue"
	keyJobSvc    = "jobsvc"
	keyJobRun    = "jobrun"
	keyJobRunSvc = "jobrunsvc"
)

// jobLib is shared by the queue scripts.
const jobLib = `
local P = ARGV[1]
local function jk(id) return P .. 'job:' .. id end
-- renumber gives the queued jobs positions 1..n in the jobq hash.
local function renumber()
  local q = redis.call('LRANGE', P .. 'jobqueue', 0, -1)
  for i, id in ipairs(q) do redis.call('HSET', P .. 'jobq', id, i) end
  return q
end
-- unqueue takes id out of the queue; false when it was not queued.
local function unqueue(id)
  if redis.call('LREM', P .. 'jobqueue', 0, id) == 0 then return false end
  redis.call('HDEL', P .. 'jobsvc', id)
  redis.call('HSET', P .. 'jobq', id, 0)
  renumber()
  return true
end
-- free gives a starting or running job's place back, once.
local function free(id, svc)
  if redis.call('HDEL', P .. 'jobrun', id) == 1 then
    redis.call('HINCRBY', P .. 'jobrunsvc', svc, -1)
  end
end
`

// enqueue: ARGV prefix job-JSON maxQueued. Returns the job's JSON, or
// {-1, waiting} when the queue is full.
var enqueueScript = redis.NewScript(jobLib + `
local max = tonumber(ARGV[3])
local waiting = redis.call('LLEN', P .. 'jobqueue')
if max > 0 and waiting >= max then return {-1, waiting} end
local n = redis.call('INCR', P .. 'jobnum')
local top = redis.call('ZREVRANGE', P .. 'jobs', 0, 0, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= n then
  n = tonumber(top[2]) + 1
  redis.call('SET', P .. 'jobnum', n)
end
local j = cjson.decode(ARGV[2])
j.ID = 'job-' .. n
j.Num = n
j.State = 'queued'
j.Replica = ''
j.QueuePos = waiting + 1
local enc = cjson.encode(j)
redis.call('SET', jk(j.ID), enc)
redis.call('ZADD', P .. 'jobs', n, j.ID)
redis.call('RPUSH', P .. 'jobqueue', j.ID)
redis.call('HSET', P .. 'jobsvc', j.ID, j.Service)
redis.call('HSET', P .. 'jobq', j.ID, waiting + 1)
return enc`)

func decodeJob(s string) (store.Job, error) {
	var j store.Job
	if err := json.Unmarshal([]byte(s), &j); err != nil {
		return j, fmt.Errorf("job record: %w", err)
	}
	return j, nil
}

// EnqueueJob numbers j and queues it last.
func (s *Store) EnqueueJob(ctx context.Context, j store.Job, maxQueued int) (store.Job, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return j, fmt.Errorf("encoding a job: %w", err)
	}
	res, err := enqueueScript.Run(ctx, s.c, nil, s.prefix, string(b), maxQueued).Result()
	if err != nil {
		return j, fmt.Errorf("queueing a job: %w", err)
	}
	if full, ok := res.([]any); ok && len(full) == 2 {
		return j, fmt.Errorf("%w (%v jobs wait)", store.ErrQueueFull, full[1])
	}
	str, _ := res.(string)
	return decodeJob(str)
}

// claim: ARGV prefix replica now limits-JSON. Returns the claimed job's
// JSON, or false.
var claimJobScript = redis.NewScript(jobLib + `
local me, now, lim = ARGV[2], ARGV[3], cjson.decode(ARGV[4])
local full = {}
for _, id in ipairs(redis.call('LRANGE', P .. 'jobqueue', 0, -1)) do
  local svc = redis.call('HGET', P .. 'jobsvc', id)
  local raw = redis.call('GET', jk(id))
  if not svc or not raw then
    redis.call('LREM', P .. 'jobqueue', 0, id)
  elseif lim[svc] and not full[svc] then
    local n = tonumber(redis.call('HGET', P .. 'jobrunsvc', svc) or '0')
    if n < tonumber(lim[svc]) then
      unqueue(id)
      local j = cjson.decode(raw)
      j.State = 'starting'
      j.Replica = me
      j.Started = now
      j.QueuePos = 0
      local enc = cjson.encode(j)
      redis.call('SET', jk(id), enc)
      redis.call('HSET', P .. 'jobrun', id, me)
      redis.call('HINCRBY', P .. 'jobrunsvc', svc, 1)
      return enc
    end
    full[svc] = true
  end
end
return false`)

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ClaimJob takes the first queued job with a free place.
func (s *Store) ClaimJob(ctx context.Context, replica string, limits map[string]int, now time.Time) (store.Job, error) {
	lb, err := json.Marshal(limits)
	if err != nil {
		return store.Job{}, fmt.Errorf("claiming a job: %w", err)
	}
	if len(limits) == 0 {
		lb = []byte(`{}`)
	}
	str, err := claimJobScript.Run(ctx, s.c, nil, s.prefix, replica, stamp(now), string(lb)).Text()
	if errors.Is(err, redis.Nil) {
		return store.Job{}, fmt.Errorf("no queued job has a free place: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.Job{}, fmt.Errorf("claiming a job: %w", err)
	}
	return decodeJob(str)
}

// move: ARGV prefix id position. Returns the queue, or false when id is
// not queued.
var moveJobScript = redis.NewScript(jobLib + `
local id, pos = ARGV[2], tonumber(ARGV[3])
local L = P .. 'jobqueue'
if redis.call('LREM', L, 0, id) == 0 then return false end
local n = redis.call('LLEN', L)
if pos < 1 then pos = 1 end
if pos > n then
  redis.call('RPUSH', L, id)
else
  local pivot = redis.call('LINDEX', L, pos - 1)
  redis.call('LINSERT', L, 'BEFORE', pivot, id)
end
return renumber()`)

// MoveJob moves a queued job to position.
func (s *Store) MoveJob(ctx context.Context, id string, position int) ([]string, error) {
	ids, err := moveJobScript.Run(ctx, s.c, nil, s.prefix, id, position).StringSlice()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("job %q: %w", id, store.ErrNotQueued)
	}
	if err != nil {
		return nil, fmt.Errorf("moving job %s: %w", id, err)
	}
	return ids, nil
}

// dequeue: ARGV prefix id state reason now. Returns the job's JSON, or
// false when it is not queued.
var dequeueScript = redis.NewScript(jobLib + `
local id = ARGV[2]
local raw = redis.call('GET', jk(id))
if not raw or not unqueue(id) then return false end
local j = cjson.decode(raw)
j.State = ARGV[3]
j.Reason = ARGV[4]
j.Finished = ARGV[5]
j.QueuePos = 0
local enc = cjson.encode(j)
redis.call('SET', jk(id), enc)
return enc`)

// DequeueJob ends a queued job.
func (s *Store) DequeueJob(ctx context.Context, id, state, reason string, now time.Time) (store.Job, error) {
	str, err := dequeueScript.Run(ctx, s.c, nil, s.prefix, id, state, reason, stamp(now)).Text()
	if errors.Is(err, redis.Nil) {
		return store.Job{}, fmt.Errorf("job %q: %w", id, store.ErrNotQueued)
	}
	if err != nil {
		return store.Job{}, fmt.Errorf("taking job %s out of the queue: %w", id, err)
	}
	return decodeJob(str)
}

// update: ARGV prefix id JSON replica final. 1 when saved.
var updateJobScript = redis.NewScript(jobLib + `
local id, me = ARGV[2], ARGV[4]
if redis.call('HGET', P .. 'jobrun', id) ~= me then return 0 end
local raw = redis.call('GET', jk(id))
if not raw then return 0 end
local cur = cjson.decode(raw)
if cur.State ~= 'starting' and cur.State ~= 'running' then return 0 end
redis.call('SET', jk(id), ARGV[3])
redis.call('HSET', P .. 'jobq', id, 0)
if ARGV[5] == '1' then free(id, cur.Service) end
return 1`)

// UpdateJob saves j while it is still j.Replica's.
func (s *Store) UpdateJob(ctx context.Context, j store.Job, final bool) (bool, error) {
	j.QueuePos = 0
	b, err := json.Marshal(j)
	if err != nil {
		return false, fmt.Errorf("encoding job %s: %w", j.ID, err)
	}
	f := "0"
	if final {
		f = "1"
	}
	n, err := updateJobScript.Run(ctx, s.c, nil, s.prefix, j.ID, string(b), j.Replica, f).Int()
	if err != nil {
		return false, fmt.Errorf("saving job %s: %w", j.ID, err)
	}
	return n == 1, nil
}

// interrupt: ARGV prefix replica reason now. Returns the interrupted
// jobs' JSON.
var interruptJobsScript = redis.NewScript(jobLib + `
local rep, out = ARGV[2], {}
local run = redis.call('HGETALL', P .. 'jobrun')
for i = 1, #run, 2 do
  local id = run[i]
  if run[i + 1] == rep then
    local raw = redis.call('GET', jk(id))
    if raw then
      local j = cjson.decode(raw)
      free(id, j.Service)
      if j.State == 'starting' or j.State == 'running' then
        j.State = 'interrupted'
        j.Reason = ARGV[3]
        j.Finished = ARGV[4]
        local enc = cjson.encode(j)
        redis.call('SET', jk(id), enc)
        table.insert(out, enc)
      end
    else
      redis.call('HDEL', P .. 'jobrun', id)
    end
  end
end
return out`)

// InterruptJobsOf ends replica's running jobs as interrupted, once.
func (s *Store) InterruptJobsOf(ctx context.Context, replica, reason string, now time.Time) ([]store.Job, error) {
	strs, err := interruptJobsScript.Run(ctx, s.c, nil, s.prefix, replica, reason, stamp(now)).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("interrupting the jobs of replica %s: %w", replica, err)
	}
	out := make([]store.Job, 0, len(strs))
	for _, str := range strs {
		j, err := decodeJob(str)
		if err != nil {
			return out, err
		}
		out = append(out, j)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Num < out[b].Num })
	return out, nil
}

// JobReplicas returns the replicas with starting or running jobs.
func (s *Store) JobReplicas(ctx context.Context) ([]string, error) {
	vals, err := s.c.HVals(ctx, s.Key(keyJobRun)).Result()
	if err != nil {
		return nil, fmt.Errorf("listing job replicas: %w", err)
	}
	seen := map[string]bool{}
	var out []string
	for _, v := range vals {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out, nil
}
