package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
)

// A small MessagePack codec for the types wslink messages carry: nil,
// bool, integers, floats, strings, binary, arrays and maps (string keys).

func encode(v any) ([]byte, error) {
	var b []byte
	return appendValue(b, v)
}

func appendValue(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(b, 0xc0), nil
	case bool:
		if x {
			return append(b, 0xc3), nil
		}
		return append(b, 0xc2), nil
	case int:
		return appendInt(b, int64(x)), nil
	case int64:
		return appendInt(b, x), nil
	case uint64:
		if x <= math.MaxInt64 {
			return appendInt(b, int64(x)), nil
		}
		return binary.BigEndian.AppendUint64(append(b, 0xcf), x), nil
	case float64:
		return binary.BigEndian.AppendUint64(append(b, 0xcb), math.Float64bits(x)), nil
	case string:
		n := len(x)
		switch {
		case n < 32:
			b = append(b, 0xa0|byte(n))
		case n <= math.MaxUint8:
			b = append(b, 0xd9, byte(n))
		case n <= math.MaxUint16:
			b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
		default:
			b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
		}
		return append(b, x...), nil
	case []byte:
		n := len(x)
		switch {
		case n <= math.MaxUint8:
			b = append(b, 0xc4, byte(n))
		case n <= math.MaxUint16:
			b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
		default:
			b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
		}
		return append(b, x...), nil
	case []any:
		n := len(x)
		switch {
		case n < 16:
			b = append(b, 0x90|byte(n))
		case n <= math.MaxUint16:
			b = binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
		default:
			b = binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
		}
		var err error
		for _, e := range x {
			if b, err = appendValue(b, e); err != nil {
				return nil, err
			}
		}
		return b, nil
	case map[string]any:
		n := len(x)
		switch {
		case n < 16:
			b = append(b, 0x80|byte(n))
		case n <= math.MaxUint16:
			b = binary.BigEndian.AppendUint16(append(b, 0xde), uint16(n))
		default:
			b = binary.BigEndian.AppendUint32(append(b, 0xdf), uint32(n))
		}
		keys := make([]string, 0, n)
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var err error
		for _, k := range keys {
			if b, err = appendValue(b, k); err != nil {
				return nil, err
			}
			if b, err = appendValue(b, x[k]); err != nil {
				return nil, err
			}
		}
		return b, nil
	}
	return nil, fmt.Errorf("msgpack: cannot encode %T", v)
}

func appendInt(b []byte, i int64) []byte {
	switch {
	case i >= 0 && i < 128:
		return append(b, byte(i))
	case i < 0 && i >= -32:
		return append(b, byte(int8(i)))
	case i >= math.MinInt8 && i <= math.MaxInt8:
		return append(b, 0xd0, byte(int8(i)))
	case i >= math.MinInt16 && i <= math.MaxInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(int16(i)))
	case i >= math.MinInt32 && i <= math.MaxInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(int32(i)))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(i))
}

var errShort = errors.New("msgpack: truncated data")

// decode decodes exactly one value filling p.
func decode(p []byte) (any, error) {
	d := decoder{p: p}
	v, err := d.value(0)
	if err != nil {
		return nil, err
	}
	if d.i != len(p) {
		return nil, fmt.Errorf("msgpack: %d bytes after the value", len(p)-d.i)
	}
	return v, nil
}

type decoder struct {
	p []byte
	i int
}

func (d *decoder) take(n int) ([]byte, error) {
	if n < 0 || d.i+n > len(d.p) {
		return nil, errShort
	}
	b := d.p[d.i : d.i+n]
	d.i += n
	return b, nil
}

func (d *decoder) uint(n int) (uint64, error) {
	b, err := d.take(n)
	if err != nil {
		return 0, err
	}
	var u uint64
	for _, c := range b {
		u = u<<8 | uint64(c)
	}
	return u, nil
}

func (d *decoder) value(depth int) (any, error) {
	if depth > 64 {
		return nil, errors.New("msgpack: nested too deep")
	}
	tb, err := d.take(1)
	if err != nil {
		return nil, err
	}
	t := tb[0]
	switch {
	case t <= 0x7f:
		return int64(t), nil
	case t >= 0xe0:
		return int64(int8(t)), nil
	case t&0xf0 == 0x80:
		return d.mapN(int(t&0x0f), depth)
	case t&0xf0 == 0x90:
		return d.arrayN(int(t&0x0f), depth)
	case t&0xe0 == 0xa0:
		b, err := d.take(int(t & 0x1f))
		return string(b), err
	}
	switch t {
	case 0xc0:
		return nil, nil
	case 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	case 0xc4, 0xc5, 0xc6:
		n, err := d.uint(1 << (t - 0xc4))
		if err != nil {
			return nil, err
		}
		b, err := d.take(int(n))
		return append([]byte(nil), b...), err
	case 0xca:
		u, err := d.uint(4)
		return float64(math.Float32frombits(uint32(u))), err
	case 0xcb:
		u, err := d.uint(8)
		return math.Float64frombits(u), err
	case 0xcc, 0xcd, 0xce, 0xcf:
		u, err := d.uint(1 << (t - 0xcc))
		if u > math.MaxInt64 {
			return u, err
		}
		return int64(u), err
	case 0xd0:
		u, err := d.uint(1)
		return int64(int8(u)), err
	case 0xd1:
		u, err := d.uint(2)
		return int64(int16(u)), err
	case 0xd2:
		u, err := d.uint(4)
		return int64(int32(u)), err
	case 0xd3:
		u, err := d.uint(8)
		return int64(u), err
	case 0xd9, 0xda, 0xdb:
		n, err := d.uint(1 << (t - 0xd9))
		if err != nil {
			return nil, err
		}
		b, err := d.take(int(n))
		return string(b), err
	case 0xdc, 0xdd:
		n, err := d.uint(2 << (t - 0xdc))
		if err != nil {
			return nil, err
		}
		return d.arrayN(int(n), depth)
	case 0xde, 0xdf:
		n, err := d.uint(2 << (t - 0xde))
		if err != nil {
			return nil, err
		}
		return d.mapN(int(n), depth)
	}
	return nil, fmt.Errorf("msgpack: unsupported type byte 0x%02x", t)
}

func (d *decoder) arrayN(n, depth int) (any, error) {
	if n > len(d.p)-d.i {
		return nil, errShort
	}
	out := make([]any, n)
	for i := range out {
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (d *decoder) mapN(n, depth int) (any, error) {
	if n > len(d.p)-d.i {
		return nil, errShort
	}
	out := make(map[string]any, n)
	for i := 0; i < n; i++ {
		k, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		out[fmt.Sprint(k)] = v
	}
	return out, nil
}
