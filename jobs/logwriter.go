package jobs

import (
	"bytes"
	"io"
	"os"
	"sync"
	"time"
)

// maxEventData bounds the log bytes carried by one logs.append event; a
// larger batch is announced by offset and length only (read it with
// logs.read).
const maxEventData = 64 << 10

// maxLine bounds a line kept for progress parsing.
const maxLine = 16 << 10

// logWriter copies a job's output into its log file, batches it into
// logs.append events and feeds the progress parser.
type logWriter struct {
	m        *Manager
	id       string
	owner    string
	f        *os.File
	progress *progressParser

	flushMu sync.Mutex // serialises flushes, so events keep offset order

	mu         sync.Mutex
	size       int64 // bytes in the log file
	pending    []byte
	pendingOff int64
	pendingLen int64
	partial    []byte
	last       *Progress // newest progress
	announced  *Progress // newest progress published
}

// copy reads the job's output until EOF.
func (w *logWriter) copy(r io.ReadCloser) {
	defer r.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			w.write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

func (w *logWriter) write(p []byte) {
	if _, err := w.f.Write(p); err != nil {
		w.m.log.Warn().Err(err).Str("job", w.id).Msg("writing job log")
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.size += int64(len(p))
	if w.pendingLen == 0 {
		w.pendingOff = w.size - int64(len(p))
	}
	w.pendingLen += int64(len(p))
	if len(w.pending) < maxEventData {
		w.pending = append(w.pending, p...)
	}
	if w.progress == nil || len(w.progress.rules) == 0 {
		return
	}
	data := p
	for len(data) > 0 {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			if len(w.partial)+len(data) <= maxLine {
				w.partial = append(w.partial, data...)
			}
			return
		}
		line := data[:i]
		if len(w.partial) > 0 {
			line = append(w.partial, line...)
			w.partial = w.partial[:0]
		}
		if pr, ok := w.progress.line(string(line), now); ok {
			c := pr
			w.last = &c
		}
		data = data[i+1:]
	}
}

// cur returns the newest progress.
func (w *logWriter) cur() *Progress {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// flush publishes what was written since the last flush, and records
// new progress.
func (w *logWriter) flush() {
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	w.mu.Lock()
	var appendEv map[string]any
	if w.pendingLen > 0 {
		appendEv = map[string]any{"id": w.id, "offset": w.pendingOff, "length": w.pendingLen}
		if w.pendingLen <= maxEventData {
			appendEv["data"] = string(w.pending)
		} else {
			appendEv["truncated"] = true
		}
	}
	w.pending, w.pendingLen = w.pending[:0], 0
	var prog *Progress
	if w.last != nil && w.last != w.announced {
		w.announced = w.last
		prog = w.last
	}
	w.mu.Unlock()

	pub := w.m.cfg.Events
	if appendEv != nil && pub != nil {
		pub.Publish("logs.append", w.owner, appendEv)
	}
	if prog != nil {
		w.m.setProgress(w.id, prog)
		if pub != nil {
			d := map[string]any{"id": w.id, "current": prog.Current, "total": prog.Total, "percent": prog.Percent}
			if prog.ETA != nil {
				d["eta_seconds"] = *prog.ETA
			}
			pub.Publish("job.progress", w.owner, d)
		}
	}
}

// flushLoop flushes every interval until done.
func (w *logWriter) flushLoop(every time.Duration, done <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			w.flush()
		}
	}
}
