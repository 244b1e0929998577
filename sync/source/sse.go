package source

import (
	"bufio"
	"bytes"
	"io"
)

// Limits of the event stream parser. Events are triggers, so nothing needs
// their full data; these bound the memory one event can take, however long
// its lines (Marathon before 1.7 puts the whole root group in deployment
// events, megabytes on one data line).
const (
	sseMaxLine = 64 << 10 // bytes kept of one line; the rest is read and dropped
	sseMaxData = 64 << 10 // bytes kept of one event's data
	sseBufSize = 32 << 10 // read buffer
)

// sseEvent is one dispatched server-sent event.
type sseEvent struct {
	Type      string // the event field; "message" when the event had none
	Data      string // data lines joined with "\n"
	ID        string // last event id seen on the stream
	Truncated bool   // Data (or a field line) was longer than the limits and was cut
}

// sseReader parses a text/event-stream as the WHATWG HTML standard
// ("Server-sent events", "Interpreting an event stream") describes it: lines
// end in CRLF, LF or CR; a blank line dispatches the event; lines starting
// with ':' are comments; "field: value" (one space after the colon dropped)
// or a bare field name; data lines accumulate; an event without data is not
// dispatched; what is pending at the end of the stream is discarded.
//
// The retry field is ignored: Watch's backoff decides when to reconnect.
// The id is kept but not sent back as Last-Event-ID, since Marathon does not
// replay events; a reconnected stream triggers a full load instead.
type sseReader struct {
	lines lineReader

	lastID    string
	eventType []byte
	data      []byte
	hasData   bool // a data line was seen (data may be empty)
	truncated bool
	started   bool // past the optional byte order mark
}

func newSSEReader(r io.Reader) *sseReader {
	return &sseReader{lines: lineReader{r: bufio.NewReaderSize(r, sseBufSize), max: sseMaxLine}}
}

// Next returns the next event. Its error is the reader's (io.EOF when the
// stream ended cleanly between lines).
func (s *sseReader) Next() (sseEvent, error) {
	for {
		line, cut, err := s.lines.next()
		if err != nil {
			return sseEvent{}, err
		}
		if !s.started {
			s.started = true
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		if len(line) == 0 {
			if ev, ok := s.dispatch(); ok {
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue // comment
		}
		name, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			name, value = line[:i], line[i+1:]
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(name) {
		case "event":
			s.eventType = append(s.eventType[:0], value...)
			s.truncated = s.truncated || cut
		case "data":
			s.appendData(value, cut)
		case "id":
			if bytes.IndexByte(value, 0) < 0 && !cut {
				s.lastID = string(value)
			}
		}
	}
}

// appendData adds one data line, keeping at most sseMaxData bytes.
func (s *sseReader) appendData(value []byte, cut bool) {
	s.hasData = true
	if cut {
		s.truncated = true
	}
	room := sseMaxData - len(s.data)
	if room <= 0 {
		s.truncated = true
		return
	}
	if len(value) > room {
		value = value[:room]
		s.truncated = true
	}
	s.data = append(s.data, value...)
	if len(s.data) < sseMaxData {
		s.data = append(s.data, '\n')
	}
}

// dispatch ends the current event. An event without any data line is
// dropped, as the standard says.
func (s *sseReader) dispatch() (sseEvent, bool) {
	defer func() {
		s.eventType = s.eventType[:0]
		s.data = s.data[:0]
		s.hasData = false
		s.truncated = false
	}()
	if !s.hasData {
		return sseEvent{}, false
	}
	data := bytes.TrimSuffix(s.data, []byte("\n"))
	ev := sseEvent{Type: string(s.eventType), Data: string(data), ID: s.lastID, Truncated: s.truncated}
	if ev.Type == "" {
		ev.Type = "message"
	}
	return ev, true
}

// lineReader splits a stream into lines ended by CRLF, LF or CR, keeping at
// most max bytes of each line and dropping the rest. A CR that ends a line
// is reported at once, without waiting for a possible LF.
type lineReader struct {
	r      *bufio.Reader
	max    int
	buf    []byte
	skipLF bool // the last line ended in CR: a leading LF belongs to it
}

// next returns the next line without its end, and whether it was cut. The
// slice is valid until the next call.
func (l *lineReader) next() ([]byte, bool, error) {
	l.buf = l.buf[:0]
	cut := false
	for {
		if _, err := l.r.Peek(1); err != nil {
			return nil, false, err // a line without an end at EOF is discarded
		}
		avail, _ := l.r.Peek(l.r.Buffered())
		if l.skipLF {
			l.skipLF = false
			if avail[0] == '\n' {
				_, _ = l.r.Discard(1)
				continue
			}
		}
		end := bytes.IndexAny(avail, "\r\n")
		part := avail
		if end >= 0 {
			part = avail[:end]
		}
		if room := l.max - len(l.buf); len(part) > room {
			part = part[:room]
			cut = true
		}
		l.buf = append(l.buf, part...)
		if end < 0 {
			_, _ = l.r.Discard(len(avail))
			continue
		}
		l.skipLF = avail[end] == '\r'
		_, _ = l.r.Discard(end + 1)
		return l.buf, cut, nil
	}
}
