package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestMsgpackRoundTrip(t *testing.T) {
	vals := []any{
		nil, true, false, int64(0), int64(127), int64(128), int64(-1), int64(-33), int64(-129), int64(70000),
		int64(-70000), int64(1 << 40), 1.5, "", "hello", strings.Repeat("x", 40), strings.Repeat("y", 300),
		strings.Repeat("z", 70000), []byte{1, 2, 3}, []any{}, []any{int64(1), "a", nil},
		map[string]any{}, map[string]any{"wslink": "1.0", "id": "system:c0:0", "args": []any{map[string]any{"secret": "s"}}},
	}
	for _, v := range vals {
		b, err := encode(v)
		if err != nil {
			t.Fatalf("encode %v: %v", v, err)
		}
		got, err := decode(b)
		if err != nil {
			t.Fatalf("decode %v: %v", v, err)
		}
		if !reflect.DeepEqual(got, v) {
			t.Errorf("round trip %#v gave %#v", v, got)
		}
	}
	// The hello the wslink client sends, as @msgpack/msgpack packs it.
	hello := []byte("\x85\xa6wslink\xa31.0\xa2id\xabsystem:c0:0\xa6method\xacwslink.hello\xa4args\x91\x81\xa6secret\xa1s\xa6kwargs\x80")
	v, err := decode(hello)
	if err != nil {
		t.Fatal(err)
	}
	m := v.(map[string]any)
	if m["method"] != "wslink.hello" || m["args"].([]any)[0].(map[string]any)["secret"] != "s" {
		t.Errorf("hello %v", m)
	}
	for _, bad := range [][]byte{{0x92, 0x01}, {0xd9}, {0xc1}, bytes.Repeat([]byte{0x91}, 100)} {
		if _, err := decode(bad); err == nil {
			t.Errorf("decode %x: no error", bad)
		}
	}
}
