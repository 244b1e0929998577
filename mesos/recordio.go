package mesos

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxRecord bounds one record of the operator API stream. The first
// record (SUBSCRIBED with the whole cluster state) is the large one: 50,000
// tasks make about 100 MB of JSON.
const DefaultMaxRecord = 1 << 30

// maxLengthDigits bounds the length prefix: 10 digits hold DefaultMaxRecord.
const maxLengthDigits = 10

// RecordReader reads the RecordIO framing of the Mesos operator API: each
// record is its length in bytes in decimal, a newline, then that many bytes.
// Chunked transfer encoding is undone by net/http below; records may be cut
// anywhere across chunks, which the buffered reads here do not notice.
type RecordReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewRecordReader returns a reader of records from r, none larger than max
// bytes (DefaultMaxRecord when max <= 0).
func NewRecordReader(r io.Reader, max int) *RecordReader {
	if max <= 0 {
		max = DefaultMaxRecord
	}
	return &RecordReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// ErrFraming is wrapped by every error about a malformed stream (as opposed
// to the reader's own errors).
var ErrFraming = errors.New("recordio framing")

// Next returns the next record. The slice is valid until the next call. At a
// clean end of the stream (between records) it returns io.EOF; a stream that
// ends inside a record returns io.ErrUnexpectedEOF; a malformed length
// returns an error wrapping ErrFraming. After an error the reader is
// unusable: the stream cannot be resynchronised.
func (rr *RecordReader) Next() ([]byte, error) {
	n, digits := 0, 0
	for {
		c, err := rr.r.ReadByte()
		if err != nil {
			if err == io.EOF && digits > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if c == '\n' {
			break
		}
		if c < '0' || c > '9' {
			return nil, fmt.Errorf("%w: byte %q in a record length", ErrFraming, c)
		}
		digits++
		if digits > maxLengthDigits {
			return nil, fmt.Errorf("%w: record length longer than %d digits", ErrFraming, maxLengthDigits)
		}
		n = n*10 + int(c-'0')
	}
	if digits == 0 {
		return nil, fmt.Errorf("%w: empty record length", ErrFraming)
	}
	if n > rr.max {
		return nil, fmt.Errorf("%w: record of %d bytes, larger than %d", ErrFraming, n, rr.max)
	}
	if cap(rr.buf) < n {
		rr.buf = make([]byte, n)
	}
	rr.buf = rr.buf[:n]
	if _, err := io.ReadFull(rr.r, rr.buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	// A large first record is not kept for the life of the stream.
	if cap(rr.buf) > 1<<20 {
		out := rr.buf
		rr.buf = nil
		return out, nil
	}
	return rr.buf, nil
}

// AppendRecord appends the RecordIO framing of data to dst.
func AppendRecord(dst, data []byte) []byte {
	dst = fmt.Appendf(dst, "%d\n", len(data))
	return append(dst, data...)
}
