package result

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// MaxFileSize bounds what ReadJSON and ReadCSV read: 64 MiB.
const MaxFileSize = 64 << 20

// WriteJSON writes f as indented JSON. An empty Format is set to FormatV1.
func WriteJSON(w io.Writer, f *File) error {
	c := *f
	if c.Format == "" {
		c.Format = FormatV1
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&c); err != nil {
		return fmt.Errorf("result: write json: %w", err)
	}
	return nil
}

// ReadJSON reads a File written by WriteJSON. It rejects other formats,
// inputs larger than MaxFileSize, trailing data and series without a target
// or tool.
func ReadJSON(r io.Reader) (*File, error) {
	lr := &io.LimitedReader{R: r, N: MaxFileSize + 1}
	dec := json.NewDecoder(lr)
	var f File
	if err := dec.Decode(&f); err != nil {
		if lr.N <= 0 {
			return nil, fmt.Errorf("result: read json: larger than %d bytes", MaxFileSize)
		}
		return nil, fmt.Errorf("result: read json: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("result: read json: trailing data after the object")
	}
	if f.Format != FormatV1 {
		return nil, fmt.Errorf("result: read json: format %q, want %q", f.Format, FormatV1)
	}
	if err := validate(f.Series); err != nil {
		return nil, fmt.Errorf("result: read json: %w", err)
	}
	return &f, nil
}

// ReadJSONFile reads a File from path.
func ReadJSONFile(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("result: %w", err)
	}
	defer fh.Close()
	f, err := ReadJSON(fh)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return f, nil
}

func validate(series []Series) error {
	for i, s := range series {
		if s.Target == "" || s.Tool == "" {
			return fmt.Errorf("series %d: empty target or tool", i)
		}
		for _, st := range s.Steps {
			if st.Concurrency <= 0 {
				return fmt.Errorf("series %q: step with concurrency %d", s.Target, st.Concurrency)
			}
			if st.Requests < 0 || st.OK < 0 || st.Errors < 0 || st.HTTPErrors < 0 || st.TimeoutCount() < 0 {
				return fmt.Errorf("series %q: negative count at concurrency %d", s.Target, st.Concurrency)
			}
		}
	}
	return nil
}
